"""Tests for rtfm_env.data.recorder: the record command, resuming, splits and config checks."""

import argparse

import numpy as np
import pytest

from rtfm_env.data import recorder as rec
from rtfm_env.data import shards as sh
from rtfm_env.data.dataset import PosedFrameDataset
from rtfm_env.geometry import camera_pose
from rtfm_env.scenes import HELDOUT_IDS, TRAIN_IDS

ENV = "MiniWorld-OneRoom-v0"


def tiny(out, **kw) -> rec.RecordConfig:
    """A recording small enough for a unit test: 3 episodes x 12 frames at 16x16, 2 episodes per shard."""
    opts = {"envs": ["OneRoom"], "episodes": 3, "steps": 12, "res": 16, "out": str(out), "episodes_per_shard": 2}
    return rec.RecordConfig(**(opts | kw))


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """One uninterrupted tiny recording, shared by the tests that only read it."""
    out = tmp_path_factory.mktemp("rec") / "train"
    return rec.record(tiny(out), progress=False)


def test_record_writes_shards_and_manifest(recorded):
    """A recording lists every shard with its sha256, records the config and the split, and is complete."""
    root, m = recorded.root, recorded.manifest
    assert m.complete and m.split == "train" and len(m.shards) == 2
    assert recorded.written == [f"{ENV}.00000.safetensors", f"{ENV}.00001.safetensors"] and not recorded.skipped
    assert m.config["envs"] == [ENV] and m.config["steps"] == 12 and m.config["split"] == "train"
    assert m.config["depth"] is True and m.config["format_version"] == sh.FORMAT_VERSION == m.version == 2
    assert sh.read_manifest(root).to_dict() == m.to_dict()
    assert [(e.episodes, e.frames) for e in m.shards] == [(2, 24), (1, 12)]
    for e in m.shards:
        assert sh.sha256_file(root / e.file) == e.sha256 and e.split == "train"
    assert sorted(p.name for p in root.iterdir()) == sorted([sh.MANIFEST_NAME] + [e.file for e in m.shards])


def test_recorded_content(recorded):
    """Shards hold real frames, poses that match the robot states, per-episode seeds and cycled kinds."""
    header, t = sh.read_shard(recorded.root / f"{ENV}.00000.safetensors")
    assert header.split == "train" and header.intrinsics.width == 16
    assert [e.kind for e in header.episodes] == ["random_walk", "loop"]
    assert [e.episode for e in header.episodes] == [0, 1]
    assert (header.episodes[0].seed, header.episodes[0].trajectory_seed) == rec.episode_seeds(0, ENV, 0)
    assert t["frames"].shape == (24, 16, 16, 3) and t["frames"].std() > 5
    assert header.has_depth and t["depth"].shape == (24, 16, 16) and t["depth"].dtype == np.float32
    finite = t["depth"][np.isfinite(t["depth"])]
    assert finite.size > 0 and finite.min() > 0 and np.all(~np.isnan(t["depth"]))
    for row in (0, 5, 17):
        x, z, yaw, h, pitch = t["states"][row]
        np.testing.assert_allclose(t["poses"][row], camera_pose(x, z, yaw, h, pitch), atol=1e-12)
    assert not np.array_equal(t["frames"][0], t["frames"][12])  # the two episodes differ
    header2, _ = sh.read_shard(recorded.root / f"{ENV}.00001.safetensors")
    assert [e.kind for e in header2.episodes] == ["turn360"]


def test_recorded_frames_match_the_scene(recorded):
    """A recorded frame equals the scene's render of the recorded pose for the recorded layout seed."""
    from rtfm_env.scenes import MiniWorldScene

    header, t = sh.read_shard(recorded.root / f"{ENV}.00001.safetensors")
    scene = MiniWorldScene(ENV, width=16, height=16)
    try:
        scene.reset(header.episodes[0].seed)
        np.testing.assert_array_equal(scene.render(t["poses"][7]), t["frames"][7])
    finally:
        scene.close()


def test_recorded_depth_matches_the_scene(recorded):
    """Recorded depth equals scene.render_depth at the recorded poses, to float16 precision, inf kept."""
    from rtfm_env.scenes import MiniWorldScene

    header, t = sh.read_shard(recorded.root / f"{ENV}.00000.safetensors")
    scene = MiniWorldScene(ENV, width=16, height=16)
    try:
        for row, episode in ((3, 0), (11, 0), (12, 1), (20, 1)):
            scene.reset(header.episodes[episode].seed)
            want = scene.render_depth(t["poses"][row])
            np.testing.assert_array_equal(t["depth"][row], want.astype(np.float16).astype(np.float32))
            np.testing.assert_allclose(t["depth"][row], want, rtol=2.0**-11, atol=0)
            assert np.isfinite(want).any()
    finally:
        scene.close()


def test_dataset_reads_a_recording(recorded):
    """PosedFrameDataset opens a recording made by the recorder and yields its frames and depth."""
    ds = PosedFrameDataset(recorded.root, n_context=2, max_gap=4, require_depth=True)
    assert len(ds) == 36 and ds.manifest_hash == sh.manifest_hash(recorded.root) and ds.has_depth
    item = ds[10]
    assert item["context_frames"].shape == (2, 16, 16, 3)
    assert item["context_depth"].shape == (2, 16, 16) and bool(item["has_depth"])


def test_no_depth_recording_and_depth_is_part_of_the_config(tmp_path):
    """--no-depth records RGB only; resuming it with depth on (or the reverse) is a config mismatch."""
    out = tmp_path / "rgb"
    summary = rec.record(tiny(out, episodes=1, steps=3, depth=False), progress=False)
    assert summary.manifest.config["depth"] is False and summary.manifest.complete
    header, t = sh.read_shard(out / f"{ENV}.00000.safetensors")
    assert header.version == 2 and not header.has_depth and "depth" not in t
    with pytest.raises(rec.ConfigMismatchError, match="depth: recorded False, now True"):
        rec.record(tiny(out, episodes=1, steps=3), progress=False)
    assert rec.record(tiny(out, episodes=1, steps=3, depth=False), progress=False).skipped == [header.path.name]


def test_version_1_recording_is_not_resumed(recorded, tmp_path):
    """A recording made by the version 1 recorder (no depth in its config) is refused, naming what differs."""
    out = tmp_path / "old"
    out.mkdir()
    m = sh.read_manifest(recorded.root)
    config = {k: v for k, v in m.config.items() if k != "depth"} | {"format_version": 1}
    sh.write_manifest(out, sh.Manifest(split="train", config=config, shards=[], version=1))
    with pytest.raises(rec.ConfigMismatchError, match=r"depth: recorded None, now True; format_version: recorded 1"):
        rec.record(tiny(out), progress=False)


def test_scene_without_depth_renderer_fails(monkeypatch):
    """Recording depth from a scene that cannot render it says to use --no-depth."""

    class NoDepthScene:
        def __init__(self, scene):
            self._scene = scene

        def __getattr__(self, name):
            return getattr(self._scene, name)

        def render_depth(self, pose):
            return None

    from rtfm_env.scenes import MiniWorldScene

    scene = MiniWorldScene(ENV, width=16, height=16)
    try:
        with pytest.raises(RuntimeError, match="no depth renderer; record it with --no-depth"):
            rec.record_episode(NoDepthScene(scene), ENV, 0, tiny("unused", steps=2))
        assert rec.record_episode(scene, ENV, 0, tiny("unused", steps=2, depth=False)).depth is None
    finally:
        scene.close()


def test_interrupted_recording_resumes_to_the_same_result(tmp_path, monkeypatch, recorded):
    """A run killed while writing its second shard, then re-run, equals an uninterrupted recording."""
    out = tmp_path / "train"
    real_write = rec.write_shard
    calls = []

    def crash_on_second(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            (path.parent / (sh.TEMP_PREFIX + path.name + ".crash")).write_bytes(b"half a shard")
            raise KeyboardInterrupt("killed mid-shard")
        return real_write(path, *args, **kwargs)

    monkeypatch.setattr(rec, "write_shard", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        rec.record(tiny(out), progress=False)
    monkeypatch.undo()
    partial = sh.read_manifest(out)
    assert [e.file for e in partial.shards] == [f"{ENV}.00000.safetensors"] and not partial.complete
    assert not (out / f"{ENV}.00001.safetensors").exists()

    again = rec.record(tiny(out), progress=False)
    assert again.skipped == [f"{ENV}.00000.safetensors"] and again.written == [f"{ENV}.00001.safetensors"]
    assert len(again.removed_temp) == 1 and not list(out.glob(sh.TEMP_PREFIX + "*"))
    assert again.manifest.to_dict() == recorded.manifest.to_dict()
    assert sh.manifest_hash(out) == sh.manifest_hash(recorded.root)

    done = rec.record(tiny(out), progress=False)
    assert done.written == [] and len(done.skipped) == 2 and done.frames == 0


def test_corrupted_finished_shard_is_recorded_again(tmp_path, recorded):
    """On resume a listed shard whose sha256 no longer matches is recorded again, to the same bytes."""
    out = tmp_path / "train"
    rec.record(tiny(out, episodes=2, episodes_per_shard=1), progress=False)
    victim = out / f"{ENV}.00001.safetensors"
    good = sh.sha256_file(victim)
    victim.write_bytes(b"garbage")
    again = rec.record(tiny(out, episodes=2, episodes_per_shard=1), progress=False)
    assert again.written == [victim.name] and sh.sha256_file(victim) == good


def test_config_mismatch_refused(recorded):
    """Re-running into a recording with other options fails naming the differing option."""
    with pytest.raises(rec.ConfigMismatchError, match=r"config mismatch.*steps: recorded 12, now 16"):
        rec.record(tiny(recorded.root, steps=16), progress=False)
    with pytest.raises(rec.ConfigMismatchError, match="seed: recorded 0, now 1"):
        rec.record(tiny(recorded.root, seed=1), progress=False)


def test_shards_without_manifest_refused(tmp_path):
    """A directory holding shard files but no manifest is not overwritten."""
    (tmp_path / f"{ENV}.00000.safetensors").write_bytes(b"someone's data")
    with pytest.raises(ValueError, match="no manifest.json"):
        rec.record(tiny(tmp_path), progress=False)
    assert (tmp_path / f"{ENV}.00000.safetensors").read_bytes() == b"someone's data"


def test_unknown_env_lists_valid_ids(tmp_path):
    """An unknown env id fails with the list of valid ids and writes nothing."""
    with pytest.raises(ValueError, match=r"unknown MiniWorld env id 'Mase'.*MiniWorld-Maze-v0"):
        rec.record(tiny(tmp_path / "x", envs=["Mase"]), progress=False)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("env", HELDOUT_IDS)
def test_heldout_id_refused_in_train_split(tmp_path, env):
    """Held-out ids are refused in the train split, with the training ids listed."""
    with pytest.raises(ValueError, match=r"not a training env id.*MiniWorld-Maze-v0.*--split heldout"):
        rec.record(tiny(tmp_path, envs=[env]), progress=False)


@pytest.mark.parametrize("env", ["Maze", "MiniWorld-OneRoom-v0"])
def test_training_id_refused_in_heldout_split(tmp_path, env):
    """Training ids are refused in the heldout split (that would leak)."""
    with pytest.raises(ValueError, match="is a training env id.*leak"):
        rec.record(tiny(tmp_path, envs=[env], split="heldout"), progress=False)


def test_resolve_envs_defaults_and_short_names():
    """No ids means every id of the split; short names resolve to full ids, duplicates collapse."""
    assert rec.resolve_envs(None, "train") == list(TRAIN_IDS)
    assert rec.resolve_envs(None, "heldout") == list(HELDOUT_IDS)
    assert rec.resolve_envs(["Maze", "MiniWorld-Maze-v0", "TMaze"], "train") == [
        "MiniWorld-Maze-v0",
        "MiniWorld-TMaze-v0",
    ]
    assert rec.resolve_envs(["YMaze"], "heldout") == ["MiniWorld-YMaze-v0"]


def test_episode_seeds_are_stable_and_distinct():
    """Episode seeds depend on base seed, env id and episode index, and on nothing else."""
    a = rec.episode_seeds(0, ENV, 0)
    assert a == rec.episode_seeds(0, ENV, 0)
    others = {rec.episode_seeds(1, ENV, 0), rec.episode_seeds(0, "MiniWorld-Maze-v0", 0), rec.episode_seeds(0, ENV, 1)}
    assert a not in others and len(others) == 3


def test_plan_shards_partitions_episodes():
    """Each env's episodes are cut into consecutive shards of episodes_per_shard (the last may be short)."""
    plan = rec.plan_shards(["A", "B"], episodes=5, episodes_per_shard=2)
    assert [(p.env_id, p.shard_index, list(p.episodes)) for p in plan] == [
        ("A", 0, [0, 1]), ("A", 1, [2, 3]), ("A", 2, [4]), ("B", 0, [0, 1]), ("B", 1, [2, 3]), ("B", 2, [4]),
    ]
    assert plan[1].file == "A.00001.safetensors"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"episodes": 0}, "--episodes must be >= 1"),
        ({"steps": 0}, "--steps must be >= 1"),
        ({"res": 4}, "--res must be >= 8"),
        ({"fov": 180.0}, "--fov"),
        ({"seed": -1}, "--seed"),
        ({"episodes_per_shard": 0}, "--episodes-per-shard"),
        ({"kinds": ["spiral"]}, "unknown trajectory kind 'spiral'; valid kinds"),
        ({"kinds": []}, "at least one kind"),
        ({"split": "val"}, "valid splits"),
    ],
)
def test_bad_options_refused(tmp_path, change, message):
    """Out-of-range options raise ValueError naming the option, before anything is written."""
    with pytest.raises(ValueError, match=message):
        rec.record(tiny(tmp_path / "x", **change), progress=False)
    assert not (tmp_path / "x").exists()


def _parse(argv):
    parser = argparse.ArgumentParser()
    rec.add_arguments(parser)
    return parser.parse_args(argv)


def test_command_line_defaults_and_run(tmp_path, capsys):
    """The CLI options have the documented defaults, and run() records and reports the manifest hash."""
    args = _parse([])
    assert (args.steps, args.res, args.fov, args.split, args.envs, args.seed) == (128, 64, 60.0, "train", None, 0)
    assert args.depth is True and _parse(["--no-depth"]).depth is False
    assert args.kinds == ["random_walk", "loop", "turn360", "out_and_back"]
    out = tmp_path / "cli"
    argv = ["--envs", "OneRoom", "--episodes", "1", "--steps", "3", "--res", "16", "--out", str(out),
            "--kinds", "turn360", "--episodes-per-shard", "1", "--no-progress"]
    assert rec.run(_parse(argv)) == 0
    printed = capsys.readouterr().out
    assert sh.manifest_hash(out) in printed and "1 shards recorded" in printed and "RGB-D" in printed
    assert sh.read_manifest(out).config["kinds"] == ["turn360"]


def test_command_line_errors_exit_2(tmp_path, capsys):
    """run() turns bad input into exit code 2 and a one-line message; argparse refuses unknown kinds."""
    assert rec.run(_parse(["--envs", "Nowhere", "--out", str(tmp_path)])) == 2
    assert "unknown MiniWorld env id 'Nowhere'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _parse(["--kinds", "spiral"])
    with pytest.raises(SystemExit):
        _parse(["--split", "test"])
