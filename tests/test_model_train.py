"""Tests for rtfm_env.model.train: the training loop, checkpoints, resuming, DDP and the command line."""

import csv
import json
import math
import os
import socket
from dataclasses import replace

import numpy as np
import pytest
import safetensors.torch
import torch
import torch.multiprocessing as mp
from torch.optim.swa_utils import AveragedModel

from rtfm_env import cli
from rtfm_env.data import recorder as rec
from rtfm_env.data import shards as sh
from rtfm_env.data.dataset import PosedFrameDataset
from rtfm_env.geometry import Intrinsics, RobotState
from rtfm_env.model import checkpoint as ck
from rtfm_env.model import sampler as sm
from rtfm_env.model import train as tr
from rtfm_env.model.checkpoint import load_checkpoint
from rtfm_env.model.network import FrameNetwork
from rtfm_env.model.sampler import FrameModel

RES = 16
INTR = Intrinsics(RES, RES, 60.0)


@pytest.fixture(autouse=True)
def restore_threads():
    """Training sets torch's thread count; give other tests back what they had."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    """A real training recording: OneRoom, 2 episodes x 16 frames at 16x16 (32 samples)."""
    out = tmp_path_factory.mktemp("data") / "train"
    cfg = rec.RecordConfig(envs=["OneRoom"], episodes=2, steps=16, res=RES, out=str(out))
    rec.record(cfg, progress=False)
    return out


def synthetic(root, env_id, split, seed=0, n=12):
    """A hand-made recording of one episode along x (no MiniWorld): any split and env id."""
    rng = np.random.default_rng(seed)
    states = [RobotState(0.25 * i, 0.1 * i, 0.2 * i) for i in range(n)]
    frames = rng.integers(0, 256, size=(1, RES, RES, 3), dtype=np.uint8).repeat(n, axis=0)
    frames[:, :, :, 0] = np.arange(n, dtype=np.uint8)[:, None, None] * 10
    episode = sh.Episode(
        info=sh.EpisodeInfo(0, seed=seed, trajectory_seed=seed, kind="random_walk", n_frames=n),
        frames=frames,
        poses=np.stack([s.pose() for s in states]),
        states=np.stack([s.as_array() for s in states]),
        actions=np.r_[-1, np.ones(n - 1, dtype=int)],
        collided=np.zeros(n, dtype=bool),
    )
    root.mkdir(parents=True)
    entry = sh.write_shard(root / sh.shard_name(env_id, 0), [episode], env_id=env_id, split=split, shard_index=0,
                           intrinsics=INTR)
    sh.write_manifest(root, sh.Manifest(split=split, config={"note": "synthetic"}, shards=[entry], complete=True))
    return root


def tiny(data, out, **kw) -> tr.TrainConfig:
    """A run of the T model on 16x16 frames small enough for a unit test: batch 8, 6 steps."""
    opts = dict(data=[str(data)], size="T", model_overrides=["patch=4"], batch_size=8, steps=6, warmup_steps=2,
                log_every=1, ckpt_every=4, ema_decay=0.9, out=str(out), threads=1, progress=False)
    return tr.TrainConfig(**(opts | kw))


def read_log(out):
    """The rows of a run's log.csv."""
    with open(out / tr.LOG_FILE, newline="") as f:
        return list(csv.DictReader(f))


def state_of(module):
    """A module's state dict, cloned."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_same_tensors(a, b):
    """Two dicts of tensors hold the same names and bit-identical values."""
    assert sorted(a) == sorted(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


# -- configuration and schedule ---------------------------------------------------------


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"batch_size": 0}, "--batch-size must be an int >= 1"),
        ({"schedule": "linear"}, "valid: \\['cosine', 'constant'\\]"),
        ({"size": "XL"}, "valid: \\['M', 'S', 'T'\\]"),
        ({"device": "tpu"}, "unknown --device"),
        ({"lr": 0.0}, "--lr must be a finite number"),
        ({"ema_decay": 1.5}, "--ema-decay"),
        ({"grad_clip": math.nan}, "--grad-clip"),
        ({"beta2": 1.0}, "must be < 1"),
        ({"max_gap": 0}, "--max-gap"),
        ({"n_context": 3, "n_candidates": 2}, "--n-candidates"),
        ({"data": []}, "at least one recording"),
        ({"model_overrides": ["depth"]}, "not FIELD=VALUE"),
        ({"model_overrides": ["height=32"]}, "set by the recordings"),
        ({"model_overrides": ["bogus=1"]}, "valid fields: \\['patch'"),
        ({"model_overrides": ["depth=two"]}, "not a valid int"),
        ({"model_overrides": ["qk_norm=maybe"]}, "not a valid bool"),
    ],
)
def test_config_rejects_bad_options(kw, message):
    """Each bad option fails validation with a message naming it (and the choices, for names)."""
    with pytest.raises(ValueError, match=message):
        tr.TrainConfig(**kw).validate()


def test_model_config_from_data_and_overrides():
    """The ModelConfig takes its size from --size, its resolution from the data and typed overrides."""
    cfg = tr.TrainConfig(size="T", model_overrides=["patch=4", "mlp_ratio=2.5", "qk_norm=false"])
    mcfg = tr.build_model_config(cfg, Intrinsics(48, 32))
    assert (mcfg.dim, mcfg.depth, mcfg.height, mcfg.width) == (64, 2, 32, 48)
    assert mcfg.patch == 4 and mcfg.mlp_ratio == 2.5 and mcfg.qk_norm is False
    tuned = tr.build_model_config(tr.TrainConfig(size="T", model_overrides=["sample_sigma=0", "t0_fraction=0.5"]), INTR)
    assert tuned.sample_sigma == 0.0 and tuned.t0_fraction == 0.5
    with pytest.raises(ValueError, match="exceeds the model's max_context 8"):
        tr.build_model_config(tr.TrainConfig(size="T", n_context=9, n_candidates=9), INTR)


@pytest.mark.parametrize("schedule", tr.SCHEDULES)
def test_learning_rate_schedule(schedule):
    """Linear warm-up to the peak, then constant or a cosine down to the final fraction at the last step."""
    cfg = tr.TrainConfig(lr=1e-3, warmup_steps=10, steps=110, schedule=schedule, final_lr_fraction=0.1)
    lrs = [tr.learning_rate(s, cfg) for s in range(130)]
    np.testing.assert_allclose(lrs[:10], 1e-3 * np.arange(1, 11) / 10)
    assert lrs[10] == pytest.approx(1e-3)
    if schedule == "constant":
        assert set(lrs[10:]) == {1e-3}
    else:
        assert lrs[60] == pytest.approx(0.55e-3)  # half-way down the cosine
        assert lrs[110] == pytest.approx(1e-4) and lrs[129] == pytest.approx(1e-4)
        assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))


def test_step_generator_depends_on_seed_step_and_rank():
    """The flow noise of a step is fixed by (seed, step, rank) and differs when any of them does."""
    draw = [torch.randn(4, generator=tr.step_generator(*key)) for key in [(0, 5, 0), (0, 5, 0), (1, 5, 0),
                                                                          (0, 6, 0), (0, 5, 1)]]
    assert torch.equal(draw[0], draw[1])
    assert all(not torch.equal(draw[0], d) for d in draw[2:])


def test_command_line_maps_to_config():
    """`rtfm-env train` options map onto TrainConfig fields; no option gives the defaults."""
    parser = cli.build_parser()
    args = parser.parse_args(["train", "--data", "a", "b", "--size", "T", "--model-overrides", "patch=4", "depth=3",
                              "--max-gap", "4", "--schedule", "constant", "--no-progress", "--past-only",
                              "--batch-size", "16", "--lr", "1e-3", "--heldout", "h"])
    cfg = tr.TrainConfig(**{f: getattr(args, f) for f in tr.TrainConfig.__dataclass_fields__})
    expected = tr.TrainConfig(data=["a", "b"], size="T", model_overrides=["patch=4", "depth=3"], max_gap=4,
                              schedule="constant", progress=False, past_only=True, batch_size=16, lr=1e-3,
                              heldout="h")
    assert cfg == expected
    defaults = parser.parse_args(["train"])
    assert tr.TrainConfig(**{f: getattr(defaults, f) for f in tr.TrainConfig.__dataclass_fields__}) == tr.TrainConfig()
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--precision", "fp8"])


def test_command_line_reports_bad_data(tmp_path, capsys):
    """A bad recording makes `rtfm-env train` print one error line and exit with status 2."""
    data = synthetic(tmp_path / "heldout", "MiniWorld-YMaze-v0", "heldout")
    code = cli.main(["train", "--data", str(data), "--size", "T", "--out", str(tmp_path / "run"), "--no-progress"])
    assert code == 2
    assert "rtfm-env train: error:" in capsys.readouterr().err
    assert not (tmp_path / "run" / tr.LAST).exists()


# -- data ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "env_id, split, message",
    [
        ("MiniWorld-YMaze-v0", "heldout", "'heldout' recording; training reads only"),
        ("MiniWorld-YMaze-v0", "train", "not training ids"),
        ("MiniWorld-Sign-v0", "train", "not training ids"),
    ],
)
def test_training_refuses_non_training_data(tmp_path, env_id, split, message):
    """Held-out recordings, and train-split recordings holding non-training ids, are refused."""
    data = synthetic(tmp_path / "rec", env_id, split)
    with pytest.raises(ValueError, match=message):
        tr.main(tiny(data, tmp_path / "run"))
    assert not (tmp_path / "run" / tr.LAST).exists()


def test_heldout_must_be_heldout(tmp_path, recording):
    """--heldout refuses a train-split recording, and --envs an id that no recording holds."""
    with pytest.raises(ValueError, match="refusing to open it as split 'heldout'"):
        tr.main(tiny(recording, tmp_path / "a", heldout=str(recording)))
    with pytest.raises(KeyError, match="MiniWorld-OneRoom-v0"):
        tr.main(tiny(recording, tmp_path / "b", envs=["Maze"]))


def test_evaluate_psnr_against_known_error(recording):
    """evaluate_psnr scores frames off by one grey level everywhere at 20 log10(255) dB."""
    ds = PosedFrameDataset(recording, n_context=2)

    class OffByOne:
        def generate(self, target_poses, context_frames, context_poses, intrinsics, generator=None):
            poses = target_poses.numpy()
            rows = [next(int(i) for i in range(len(ds)) if np.array_equal(ds[i]["target_pose"].numpy(), p))
                    for p in poses]
            frames = np.stack([ds[r]["target_frame"].numpy().astype(int) for r in rows])
            return np.where(frames < 255, frames + 1, frames - 1).astype(np.uint8)

    psnr = tr.evaluate_psnr(OffByOne(), ds, np.array([0, 5, 17]), batch_size=2, seed=0)
    assert psnr == pytest.approx(20 * math.log10(255.0))


def test_heldout_psnr_is_logged(tmp_path, recording):
    """With --heldout, log rows at evaluation steps carry a finite held-out PSNR and the others none."""
    heldout = synthetic(tmp_path / "heldout", "MiniWorld-YMaze-v0", "heldout")
    tr.main(tiny(recording, tmp_path / "run", heldout=str(heldout), steps=4, eval_every=2, eval_samples=4))
    rows = read_log(tmp_path / "run")
    assert [r["step"] for r in rows] == ["1", "2", "3", "4"]
    assert [r["eval_psnr"] == "" for r in rows] == [True, False, True, False]
    assert all(5.0 < float(r["eval_psnr"]) < 60.0 for r in rows[1::2])


# -- the loop ------------------------------------------------------------------------------


def test_overfits_one_batch(tmp_path, recording):
    """On one batch of 32 real samples the loss falls by more than half, below that of copying the nearest view."""
    cfg = tiny(recording, tmp_path / "run", batch_size=32, n_candidates=2, steps=60, warmup_steps=0,
               schedule="constant", lr=2e-3, log_every=10, ckpt_every=60)
    result = tr.main(cfg)
    losses = [float(r["loss"]) for r in read_log(tmp_path / "run")]
    assert len(losses) == 6 and result.loss == pytest.approx(losses[-1], rel=1e-4)
    assert losses[-1] < 0.5 * losses[0]
    # The same 32 samples every step (one batch, context drawn from exactly 2 candidates):
    ds = PosedFrameDataset(recording, n_context=2, n_candidates=2)
    batch = torch.utils.data.default_collate([ds[i] for i in range(len(ds))])
    _, stats = sm.training_loss(result.network, batch, torch.Generator().manual_seed(0))
    assert losses[-1] < stats["baseline_mse"].item()


def test_checkpoint_round_trip_reproduces_outputs(tmp_path, recording):
    """`last` reloads to the EMA weights (same generated frames) and records config, data hash and step."""
    cfg = tiny(recording, tmp_path / "run")
    result = tr.main(cfg)
    last = tmp_path / "run" / tr.LAST
    assert result.checkpoint == last and os.readlink(last) == "checkpoints/step-00000006"
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step-00000006"]
    loaded = FrameModel.from_pretrained(last)
    ds = PosedFrameDataset(recording, n_context=2)
    items = [ds[i] for i in (0, 9, 20)]
    inputs = (torch.stack([it["target_pose"] for it in items]), torch.stack([it["context_frames"] for it in items]),
              torch.stack([it["context_poses"] for it in items]), ds.intrinsics)
    expected = FrameModel(result.ema).generate(*inputs, generator=torch.Generator().manual_seed(3))
    np.testing.assert_array_equal(loaded.generate(*inputs, generator=torch.Generator().manual_seed(3)), expected)
    record = json.loads((last / ck.CONFIG_FILE).read_text())
    assert record["extra"]["step"] == 6 and record["extra"]["train_config"] == cfg.to_dict()
    assert record["extra"]["data"]["recordings"][0]["manifest_hash"] == sh.manifest_hash(recording)
    assert record["model_config"] == result.ema.config.to_dict()
    raw = safetensors.torch.load_file(last / tr.STATE_WEIGHTS)
    assert_same_tensors({k[6:]: v for k, v in raw.items() if k.startswith("model.")}, result.network.state_dict())
    assert not torch.equal(result.ema.blocks[0].mlp[0].weight, result.network.blocks[0].mlp[0].weight)


def test_resume_matches_uninterrupted_run(tmp_path, recording):
    """A run stopped at step 3 (rows logged past its checkpoint lost) and resumed equals an uninterrupted run."""
    whole = tr.main(tiny(recording, tmp_path / "whole"))
    stopped = tr.main(tiny(recording, tmp_path / "parts"), until=3)
    assert stopped.step == 3 and os.readlink(tmp_path / "parts" / tr.LAST) == "checkpoints/step-00000003"
    with open(tmp_path / "parts" / tr.LOG_FILE, "a") as f:
        f.write("4,0,0.5,0.001,1.0,10,1.0,\n5,0,0.5")  # what a kill after the checkpoint leaves behind
    resumed = tr.main(tiny(recording, tmp_path / "parts"))
    assert resumed.step == 6
    assert_same_tensors(state_of(resumed.network), state_of(whole.network))
    assert_same_tensors(state_of(resumed.ema), state_of(whole.ema))
    assert_same_tensors(safetensors.torch.load_file(tmp_path / "parts" / tr.LAST / tr.STATE_WEIGHTS),
                        safetensors.torch.load_file(tmp_path / "whole" / tr.LAST / tr.STATE_WEIGHTS))
    same = ("step", "epoch", "loss", "lr", "grad_norm")
    assert [[r[k] for k in same] for r in read_log(tmp_path / "parts")] == \
        [[r[k] for k in same] for r in read_log(tmp_path / "whole")]
    again = tr.main(tiny(recording, tmp_path / "parts"))  # a finished run re-run does nothing
    assert again.step == 6 and len(read_log(tmp_path / "parts")) == 6
    assert_same_tensors(state_of(again.network), state_of(whole.network))


def test_resume_refuses_other_options_or_data(tmp_path, recording):
    """Resuming with a different learning rate or other data is refused; more steps are allowed."""
    tr.main(tiny(recording, tmp_path / "run", steps=2))
    with pytest.raises(ValueError, match="lr: saved 0.0003, now 0.001"):
        tr.main(tiny(recording, tmp_path / "run", lr=1e-3))
    other = synthetic(tmp_path / "other", "MiniWorld-OneRoom-v0", "train", n=16)
    with pytest.raises(ValueError, match="trained on other data"):
        tr.main(tiny(other, tmp_path / "run"))
    assert tr.main(tiny(recording, tmp_path / "run", steps=3, log_every=5)).step == 3


def _fail_weights_half_written(monkeypatch):
    real = tr._write_file

    def dying(path, data):
        if path.name == tr.STATE_WEIGHTS:
            with open(path, "xb") as f:
                f.write(data[: len(data) // 2])
            raise OSError("No space left on device")
        real(path, data)

    monkeypatch.setattr(tr, "_write_file", dying)


def _fail_model_file(monkeypatch):
    def dying(path, data):
        raise OSError("No space left on device")

    monkeypatch.setattr(ck, "_write_file", dying)


def _fail_link_switch(monkeypatch):
    real = os.replace

    def dying(src, dst):
        if str(dst).endswith(tr.LAST):
            raise OSError("No space left on device")
        real(src, dst)

    monkeypatch.setattr(tr.os, "replace", dying)


@pytest.mark.parametrize("failure", [_fail_model_file, _fail_weights_half_written, _fail_link_switch])
def test_failed_save_keeps_last_checkpoint(tmp_path, recording, monkeypatch, failure):
    """A save that dies midway leaves `last` at the previous complete checkpoint, which resumes."""
    out = tmp_path / "run"
    first = tr.main(tiny(recording, out), until=4)
    saved = state_of(first.network)
    with monkeypatch.context() as m:
        failure(m)
        with pytest.raises(OSError, match="No space left"):
            tr.main(tiny(recording, out))
    assert os.readlink(out / tr.LAST) == "checkpoints/step-00000004"
    network = FrameNetwork(first.network.config)
    ema = torch.optim.swa_utils.AveragedModel(network)
    resumed = tr.load_train_checkpoint(out / tr.LAST, network, ema, torch.optim.AdamW(network.parameters()))
    assert resumed.step == 4
    assert_same_tensors(state_of(network), saved)
    assert not [p.name for p in out.rglob("*") if ".saving" in p.name or p.name.startswith(".last")]
    assert tr.main(tiny(recording, out)).step == 6


@pytest.mark.parametrize("damage, message", [
    (lambda last: (last / tr.STATE_WEIGHTS).write_bytes((last / tr.STATE_WEIGHTS).read_bytes()[:100]),
     "truncated or from another save"),
    (lambda last: (last / tr.STATE_RECORD).write_text("{not json"), "not valid JSON"),
    (lambda last: (last / tr.STATE_RECORD).unlink(), "is missing"),
    (lambda last: (last / ck.WEIGHTS_FILE).write_bytes(b"junk"), "truncated or from another save"),
])
def test_damaged_checkpoint_is_refused(tmp_path, recording, damage, message):
    """Resuming from a damaged `last` fails with a CheckpointError naming the problem (no silent restart)."""
    tr.main(tiny(recording, tmp_path / "run", steps=2))
    damage(tmp_path / "run" / tr.LAST)
    with pytest.raises(ck.CheckpointError, match=message):
        tr.main(tiny(recording, tmp_path / "run", steps=4))


# -- DDP -----------------------------------------------------------------------------------


def _ddp_worker(rank, cfg_dict, port, out):
    """One rank of a 2-process gloo run, set up as torchrun would; saves the weights it ends with."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    result = tr.main(tr.TrainConfig(**cfg_dict))
    weights = {f"model.{k}": v for k, v in result.network.state_dict().items()}
    weights |= {f"ema.{k}": v for k, v in result.ema.state_dict().items()}
    safetensors.torch.save_file({k: v.contiguous() for k, v in weights.items()}, os.path.join(out, f"rank{rank}.st"))


def free_port():
    """A TCP port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_hold_identical_weights(tmp_path, recording):
    """Two gloo processes train 3 steps to bit-identical weights, which moved from the initial ones."""
    cfg = tiny(recording, tmp_path / "run", steps=3, ckpt_every=3)
    mp.spawn(_ddp_worker, args=(cfg.to_dict(), free_port(), str(tmp_path)), nprocs=2, join=True)
    rank0 = safetensors.torch.load_file(tmp_path / "rank0.st")
    rank1 = safetensors.torch.load_file(tmp_path / "rank1.st")
    assert_same_tensors(rank0, rank1)
    torch.manual_seed(cfg.seed)
    initial = FrameNetwork(tr.build_model_config(cfg, INTR)).state_dict()
    assert not torch.equal(rank0["model.final_layer.linear.weight"], initial["final_layer.linear.weight"])
    saved = safetensors.torch.load_file(tmp_path / "run" / tr.LAST / tr.STATE_WEIGHTS)
    assert_same_tensors({k: v for k, v in rank0.items() if k.startswith("model.")},
                        {k: v for k, v in saved.items() if k.startswith("model.")})
    assert [r["step"] for r in read_log(tmp_path / "run")] == ["1", "2", "3"]


def test_init_from_copies_checkpoint_weights(tmp_path, recording):
    """--init-from starts the network and its EMA at a checkpoint's weights; another config is refused."""
    first = tr.main(tiny(recording, tmp_path / "first"))
    source = load_checkpoint(tmp_path / "first" / tr.LAST)
    network = FrameNetwork(first.ema.config)
    ema = AveragedModel(network)
    tr._init_from(str(tmp_path / "first" / tr.LAST), network, ema, first.ema.config)
    assert_same_tensors(state_of(network), state_of(source.model))
    assert_same_tensors(state_of(ema.module), state_of(source.model))
    other = replace(first.ema.config, depth=first.ema.config.depth + 1)
    with pytest.raises(ValueError, match="depth"):
        tr._init_from(str(tmp_path / "first" / tr.LAST), FrameNetwork(other), AveragedModel(FrameNetwork(other)), other)
    started = tr.main(tiny(recording, tmp_path / "second", steps=2, init_from=str(tmp_path / "first" / tr.LAST)))
    assert started.step == 2
    tuned = replace(first.ema.config, t0_fraction=0.5, sample_sigma=0.0, sample_steps=1)  # fine-tuning fields
    tr._init_from(str(tmp_path / "first" / tr.LAST), FrameNetwork(tuned), AveragedModel(FrameNetwork(tuned)), tuned)


def test_minutes_budget_stops_with_a_checkpoint_and_resumes(recording, tmp_path, monkeypatch):
    """--minutes ends a call at the next log row with a checkpoint; the same command resumes."""
    import time

    clock = {"t": 0.0}

    def fake_clock() -> float:  # each reading advances 10 s: a 1-minute budget runs out within a few steps
        clock["t"] += 10.0
        return clock["t"]

    monkeypatch.setattr(tr.time, "perf_counter", fake_clock)
    cfg = tiny(recording, tmp_path / "run", steps=40, ckpt_every=100, minutes=1.0)
    first = tr.main(cfg)
    assert 0 < first.step < 40, first.step
    assert (tmp_path / "run" / tr.LAST).exists() and first.checkpoint is not None
    monkeypatch.setattr(tr.time, "perf_counter", time.perf_counter)
    second = tr.main(replace(cfg, minutes=0.0))  # minutes may change on resume
    assert second.step == 40
