"""Tests for fine-tuning on a world file: WorldFrameDataset, the held-out block, --init-from default, finetune.json."""

import csv
import json
import shutil

import numpy as np
import pytest
import torch

from rtfm_env import cli
from rtfm_env.data.world_dataset import WorldDataError, WorldFrameDataset, split_world
from rtfm_env.geometry import Intrinsics
from rtfm_env.memory import SpatialMemory
from rtfm_env.model import load_checkpoint
from rtfm_env.model import train as tr
from rtfm_env.model.sampler import FrameModel
from rtfm_env.world_build import BuildConfig, build_world

pytestmark = pytest.mark.usefixtures("one_thread")

KEYS = {"context_frames", "context_poses", "target_frame", "target_pose", "intrinsics", "context_steps",
        "target_step", "target_depth", "context_depth", "has_depth", "env_id"}


@pytest.fixture(autouse=True)
def restore_threads():
    """Training sets torch's thread count; give other tests back what they had."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A world file built by `rtfm-env world build --from scene YMaze --kind walk` (256 RGB-D frames, 64x64)."""
    out = tmp_path_factory.mktemp("world") / "ymaze.rtfm"
    build_world("scene", "MiniWorld-YMaze-v0", out, BuildConfig(seed=0, kind="walk"))
    return out


def small_world(source, path, n, res=None):
    """A world of the first ``n`` frames of ``source`` (every ``res`` x ``res`` pixel-sampled when given)."""
    big = SpatialMemory.load(source)
    mem = SpatialMemory()
    for i in big.ids[:n]:
        e = big.get(int(i))
        frame, depth, intr = e.frame, e.depth, e.intrinsics
        if res is not None:
            stride = frame.shape[0] // res
            frame, depth = frame[::stride, ::stride].copy(), depth[::stride, ::stride].copy()
            intr = Intrinsics(res, res, intr.fov_y)
        mem.add(frame, e.pose, intr, "observed", step=e.step, depth=depth)
    mem.save(path)
    return path


def tiny(world, out, **kw) -> tr.TrainConfig:
    """A fine-tune small enough for a unit test: batch 2, 4 steps, 8 held-out frames scored."""
    opts = dict(data=[str(world)], batch_size=2, steps=4, warmup_steps=1, lr=1e-4, precision="fp32", log_every=1,
                ckpt_every=2, eval_every=0, eval_samples=8, out=str(out), threads=1, progress=False)
    return tr.TrainConfig(**(opts | kw))


# -- the dataset ---------------------------------------------------------------------------


def test_world_samples_match_recording_samples(world):
    """Items carry PosedFrameDataset's keys, shapes and dtypes, with the world's depth and camera."""
    ds = WorldFrameDataset(world, "train", n_context=3)
    item = ds[5]
    assert set(item) == KEYS
    assert item["context_frames"].shape == (3, 64, 64, 3) and item["context_frames"].dtype == torch.uint8
    assert item["target_frame"].shape == (64, 64, 3) and item["target_frame"].dtype == torch.uint8
    assert item["context_poses"].shape == (3, 4, 4) and item["context_poses"].dtype == torch.float64
    assert item["target_pose"].shape == (4, 4) and item["target_pose"].dtype == torch.float64
    assert item["target_depth"].shape == (64, 64) and item["context_depth"].shape == (3, 64, 64)
    assert item["target_depth"].dtype == torch.float32 and bool(item["has_depth"])
    assert torch.isfinite(item["target_depth"]).any()
    assert item["intrinsics"].tolist() == [64.0, 64.0, 60.0]
    assert item["env_id"] == "world:ymaze"
    # The stored frame at the target's recording position, not some other one.
    mem = SpatialMemory.load(world)
    target_id = int(ds.target_ids[5])
    assert np.array_equal(item["target_frame"].numpy(), mem.frames([target_id])[0])
    assert np.array_equal(item["target_pose"].numpy(), mem.poses([target_id])[0])
    assert int(item["target_step"]) not in item["context_steps"].tolist()
    batch = torch.utils.data.default_collate([ds[i] for i in range(4)])
    assert batch["context_frames"].shape == (4, 3, 64, 64, 3)


def test_held_out_block_is_never_trained_on(world):
    """The last 20% is held out after a dropped gap; no held-out or dropped frame is a training target or context."""
    split = split_world(SpatialMemory.load(world), 0.2, 8)
    assert len(split.heldout) == 51 and split.heldout[0] == 205 and split.heldout[-1] == 255
    assert split.dropped.tolist() == list(range(197, 205)) and split.train.tolist() == list(range(197))
    cfg = tr.TrainConfig(data=[str(world)], n_candidates=4, max_gap=6)
    data = tr.open_training_data(cfg)
    assert data.worlds and len(data.dataset) == 197 and len(data.heldout) == 51
    train, held = data.parts[0], data.heldout_parts[0]
    unused = set(split.heldout.tolist()) | set(split.dropped.tolist())
    for epoch in range(3):
        train.set_epoch(epoch)
        for i in range(len(train)):
            target, context = train.context_positions(i)
            assert target not in unused and not unused & set(context.tolist())
            assert target not in context and np.all(np.abs(context - target) <= 6)
    assert set(held.target_ids.tolist()) == set(split.ids[split.heldout].tolist())
    for i in range(len(held)):
        target, context = held.context_positions(i)
        assert target in split.heldout and set(context.tolist()) <= set(split.train.tolist())
    assert not set(train.target_ids.tolist()) & set(held.target_ids.tolist())


# -- --init-from default ---------------------------------------------------------------------


def test_init_from_default_resolves_and_sets_the_network(world):
    """'default' (any case) is the shipped checkpoint; its config, not --size, is the run's network."""
    from rtfm_env.cameras import DEFAULT_CHECKPOINT

    assert tr.resolve_init_from("DEFAULT") == DEFAULT_CHECKPOINT == tr.resolve_init_from(" Default ")
    assert tr.resolve_init_from("runs/x/last") != DEFAULT_CHECKPOINT
    ckpt = load_checkpoint(tr.resolve_init_from("default"))
    cfg = tr.TrainConfig(size="T", init_from="default", model_overrides=["t0_fraction=0.5", "patch=8"])
    mcfg = tr.build_model_config(cfg, Intrinsics(64, 64, 60.0), ckpt.config)
    assert (mcfg.dim, mcfg.depth, mcfg.patch) == (ckpt.config.dim, ckpt.config.depth, ckpt.config.patch)
    assert mcfg.t0_fraction == 0.5 and mcfg.sample_steps == ckpt.config.sample_steps
    with pytest.raises(ValueError, match="would change its network.*depth"):
        tr.build_model_config(tr.TrainConfig(init_from="default", model_overrides=["depth=2"]),
                              Intrinsics(64, 64, 60.0), ckpt.config)
    with pytest.raises(ValueError, match="trained on 64x64 frames, the data are 32x32.*--res 64"):
        tr.build_model_config(tr.TrainConfig(init_from="default"), Intrinsics(32, 32, 60.0), ckpt.config)


def test_documented_command_runs_from_default(world, tmp_path, capsys):
    """`rtfm-env train --init-from default --data WORLD` (1 step) prints and saves before/after scores."""
    out = tmp_path / "ft"
    code = cli.main(["train", "--init-from", "default", "--data", str(world), "--steps", "1", "--batch-size", "2",
                     "--lr", "5e-5", "--warmup-steps", "1", "--precision", "fp32", "--eval-samples", "4",
                     "--threads", "1", "--no-progress", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "held-out PSNR before training" in printed and "held-out PSNR after training" in printed
    report = json.loads((out / tr.FINETUNE_FILE).read_text())
    assert report["init_checkpoint"].endswith("checkpoints/default") and report["after"]["step"] == 1
    assert load_checkpoint(out / tr.LAST).config == load_checkpoint(tr.resolve_init_from("default")).config


# -- a fine-tune run -------------------------------------------------------------------------


def test_tiny_finetune_reports_before_after_and_resumes(world, tmp_path, tiny_checkpoint):
    """Before is the init weights' score, after the final EMA's; a resumed run keeps before and adds after."""
    out = tmp_path / "run"
    cfg = tiny(world, out, init_from=str(tiny_checkpoint))
    first = tr.main(cfg, until=2)
    assert first.step == 2
    report = json.loads((out / tr.FINETUNE_FILE).read_text())
    assert report["after"] is None and report["before"]["step"] == 0 and report["before"]["frames"] == 8
    data = tr.open_training_data(cfg)
    indices = np.array(report["evaluated_indices"])

    def score(network):
        return tr.evaluate_heldout(FrameModel(network, None), data.heldout, indices, 2, cfg.seed, data.intrinsics)

    init = score(load_checkpoint(tiny_checkpoint).model)
    assert report["before"]["psnr"] == pytest.approx(init["psnr"])
    assert report["before"]["sharpness"] == pytest.approx(init["sharpness"])
    assert 5.0 < report["before"]["psnr"] < 60.0 and report["before"]["sharpness"] > 0
    assert report["baseline_copy_nearest_context"]["psnr"] != pytest.approx(init["psnr"])

    second = tr.main(cfg)  # resumes from step 2
    assert second.step == 4
    done = json.loads((out / tr.FINETUNE_FILE).read_text())
    assert done["before"] == report["before"]
    final = score(load_checkpoint(out / tr.LAST).model)
    assert done["after"]["step"] == 4 and done["after"]["psnr"] == pytest.approx(final["psnr"])
    assert done["after"]["psnr"] != pytest.approx(done["before"]["psnr"])  # the weights did change
    gain = np.mean(np.array(done["after"]["per_frame_psnr"]) - done["before"]["per_frame_psnr"])
    assert done["psnr_gain_db"]["mean"] == pytest.approx(gain)
    with open(out / tr.LOG_FILE, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["step"] for r in rows] == ["0", "1", "2", "3", "4"]
    assert float(rows[0]["eval_psnr"]) == pytest.approx(report["before"]["psnr"], abs=1e-4)
    assert tr.main(cfg).step == 4  # finished: nothing changes
    assert json.loads((out / tr.FINETUNE_FILE).read_text()) == done
    with pytest.raises(ValueError, match="holdout_gap"):
        tr.main(tiny(world, out, init_from=str(tiny_checkpoint), holdout_gap=2, steps=6))


# -- errors ----------------------------------------------------------------------------------


def test_corrupt_and_empty_worlds_are_refused(world, tmp_path, capsys):
    """A damaged, truncated or empty world file fails with a message naming the problem (exit 2 from the CLI)."""
    garbage = tmp_path / "garbage.rtfm"
    garbage.write_bytes(b"not a world" * 100)
    truncated = tmp_path / "truncated.rtfm"
    truncated.write_bytes(world.read_bytes()[: world.stat().st_size // 2])
    flipped = tmp_path / "flipped.rtfm"
    raw = bytearray(world.read_bytes())
    raw[-100] ^= 0xFF
    flipped.write_bytes(bytes(raw))
    for path in (garbage, truncated, flipped):
        with pytest.raises(WorldDataError, match="is not a readable world file"):
            tr.open_training_data(tr.TrainConfig(data=[str(path)]))
    empty = tmp_path / "empty.rtfm"
    SpatialMemory().save(empty)
    with pytest.raises(WorldDataError, match="empty world"):
        tr.open_training_data(tr.TrainConfig(data=[str(empty)]))
    code = cli.main(["train", "--data", str(flipped), "--out", str(tmp_path / "run"), "--no-progress"])
    assert code == 2 and "checksum mismatch" in capsys.readouterr().err
    assert not (tmp_path / "run" / tr.LAST).exists()


def test_world_too_small_for_the_split_is_refused(world, tmp_path):
    """Too few frames to hold out a block and still train: the error says how many and what to change."""
    path = small_world(world, tmp_path / "small.rtfm", 12)
    with pytest.raises(WorldDataError, match="has 12 frames; holding out 2.*leaves 2 training frames, fewer than"):
        tr.open_training_data(tr.TrainConfig(data=[str(path)]))
    data = tr.open_training_data(tr.TrainConfig(data=[str(path)], holdout_gap=0))  # the same world, no gap
    assert len(data.dataset) == 10 and len(data.heldout) == 2
    with pytest.raises(ValueError, match="--holdout-fraction must be a number in \\[0, 1\\)"):
        tr.TrainConfig(holdout_fraction=1.0).validate()


def test_resolution_mismatch_and_mixed_data_are_refused(world, tmp_path, tiny_checkpoint):
    """A 32x32 world cannot start from a 64x64 checkpoint; world files and recordings do not mix."""
    small = small_world(world, tmp_path / "res32.rtfm", 40, res=32)
    with pytest.raises(ValueError, match="trained on 64x64 frames, the data are 32x32"):
        tr.main(tiny(small, tmp_path / "run", init_from=str(tiny_checkpoint)))
    assert not (tmp_path / "run" / tr.LAST).exists()
    recording = tmp_path / "recording"
    recording.mkdir()
    with pytest.raises(ValueError, match="mixes world files"):
        tr.open_training_data(tr.TrainConfig(data=[str(world), str(recording)]))
    with pytest.raises(ValueError, match="--holdout-fraction applies to world files"):
        tr.open_training_data(tr.TrainConfig(data=[str(recording)], holdout_fraction=0.1))
    with pytest.raises(ValueError, match="--heldout applies to recordings"):
        tr.open_training_data(tr.TrainConfig(data=[str(world)], heldout=str(recording)))
    shutil.rmtree(recording)


# -- the benchmark ---------------------------------------------------------------------------


def test_finetune_benchmark_writes_scores_page_and_strip(tmp_path):
    """benchmarks/finetune.py fine-tunes the default on a built world and reports before, after and baselines."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import finetune as bench

    out = tmp_path / "finetune.json"
    r = bench.main(bench.FinetuneConfig(steps=2, batch_size=2, warmup_steps=1, eval_samples=4, strip_frames=2,
                                        out=str(out)))
    res = r["results"]
    assert r["steps"] == 2 and res["after"]["step"] == 2 and res["before"]["frames"] == 4
    for name in ("copy_nearest_context", "reprojection_of_context", "before", "after"):
        assert 10.0 < res[name]["psnr"] < 60.0 and 0.0 < res[name]["sharpness"] < 3.0, name
    assert "--init-from default" in r["train_command"] and "--precision fp32" in r["train_command"]
    assert "| shipped model (before) |" in out.with_suffix(".md").read_text()
    assert out.with_suffix(".png").stat().st_size > 0


def test_finetune_page_names_a_loss_and_noise_as_such():
    """The page's verdict: a gain below zero by more than two standard errors is a loss; sharpness > 1.1 is noise."""
    import copy
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import finetune as finetune_bench

    base = json.loads((Path(__file__).resolve().parents[1] / "docs/results/finetune.json").read_text())
    s = copy.deepcopy(base)
    s["results"]["psnr_gain_db"].update(mean=-0.43, se=0.10)
    s["results"]["after"]["sharpness"] = 1.18
    page = finetune_bench.markdown(s)
    assert "measurable loss" in page and "noise or seams" in page
    s["results"]["psnr_gain_db"].update(mean=-0.1, se=0.10)
    s["results"]["after"]["sharpness"] = 0.9
    page = finetune_bench.markdown(s)
    assert "not a measurable improvement" in page and "measurable loss" not in page and "noise or seams" not in page
    s["results"]["psnr_gain_db"].update(mean=1.0, se=0.10)
    assert "measurable" not in finetune_bench.markdown(s)
