"""Fixtures shared by several test modules."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """Run torch on one thread: tiny models are faster so, and CI has two shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A tiny random-weight frame-model checkpoint (T, 64x64, 4 views) whose output depends on inputs and noise."""
    from rtfm_env.model import FrameNetwork, model_config, save_checkpoint

    net = FrameNetwork(model_config("T", height=64, width=64, max_context=4))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # zero-initialised output layers would make every frame the same
        for p in net.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", net)


@pytest.fixture(scope="session")
def tiny_v2_checkpoint(tmp_path_factory):
    """A tiny v2 frame-model checkpoint (warped context in, depth out) at initialisation.

    Its residual heads start at zero, so it renders what the reprojection camera renders and
    predicts the warp's depth: an untrained v2 model is the no-learning baseline.
    """
    from rtfm_env.model import FrameNetwork, model_config, save_checkpoint
    from rtfm_env.model.network import V2

    net = FrameNetwork(model_config("T", height=64, width=64, max_context=4, **V2))
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny_v2", net)
