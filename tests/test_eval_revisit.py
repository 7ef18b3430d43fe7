"""Tests for rtfm_env.eval.revisit (the evaluator and `rtfm-env eval revisit`)."""

import json
import os
import shutil

import numpy as np
import pytest

from rtfm_env import cli
from rtfm_env.cameras import turn_in_place
from rtfm_env.eval import revisit
from rtfm_env.eval.metrics import PSNR_CAP
from rtfm_env.eval.results import RESULTS_VERSION
from rtfm_env.eval.revisit import ConfigMismatchError, RevisitConfig, evaluate
from rtfm_env.memory import SpatialMemory
from rtfm_env.model.checkpoint import CheckpointError
from rtfm_env.scenes import MiniWorldScene

#: Tiny lengths: the whole suite in well under a hundred frames per episode.
TINY = dict(excursion=30, lead_in=2, loop_steps=30, turn_rotations=1, tour_steps=120, tour_landmarks=2)


def _json(obj):
    """``obj`` as read back from JSON (its NaNs then compare equal: json reads each as one object)."""
    return json.loads(json.dumps(obj))


def _gt_config(out, **kw):
    # tour_every=2: with two episodes only the first runs the tour.
    return RevisitConfig(**{"out": str(out), "envs": ["YMaze"], "episodes": 1, "strategies": ["ground_truth"],
                            "tour_every": 2, **TINY, **kw})


@pytest.fixture(scope="module")
def gt_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gt") / "eval"
    return out, evaluate(_gt_config(out), progress=False)


def test_ground_truth_camera_revisits_at_the_cap(gt_run):
    """On the ground-truth camera, a revisit of the very same pose and every frame vs ground truth give the cap."""
    out, results = gt_run
    ep = results["episodes"][0]
    assert set(ep["trajectories"]) == {"out_and_back", "loop", "turn360", "tour"}
    exact = 0
    for traj in ep["trajectories"].values():
        row = traj["strategies"]["ground_truth"]
        states = np.array(traj["states"])
        assert len(row["revisit_psnr"]) == len(traj["revisits"])
        for (i, j), value in zip(traj["revisits"], row["revisit_psnr"], strict=True):
            if np.allclose(states[i], states[j], atol=1e-5):  # retraced poses; others are within tolerance only
                assert value == PSNR_CAP
                exact += 1
            else:
                assert value > 15.0
        assert all(v == PSNR_CAP for v in row["psnr_gt"])
        assert len(row["wall_ms"]) == len(row["cpu_ms"]) == len(row["memory_frames"]) == traj["n"]
    assert exact >= 5
    assert results["summary"]["headline"]["excursion"]["ground_truth"]["mean"] == PSNR_CAP


def test_outputs_are_written(gt_run):
    """results.json is a compact summary; every episode's numbers are in its own file; the report exists."""
    out, results = gt_run
    saved = json.loads((out / "results.json").read_text())
    assert saved["config"]["envs"] == ["YMaze"] and saved["machine"]["cpu_count"] >= 1
    assert saved["version"] == RESULTS_VERSION and saved["n_episodes"] == 1
    assert "episodes" not in saved and saved == _json({k: v for k, v in results.items() if k != "episodes"})
    episode = json.loads((out / "episodes/MiniWorld-YMaze-v0/0000.json").read_text())
    assert episode == _json(results["episodes"][0]) and episode["config_hash"] == saved["config_hash"]
    assert saved["strips"] == [{"env": "MiniWorld-YMaze-v0", "episode": 0, **episode["strip"]}]
    # The summary does not repeat the episode: a fraction of its size (the tour's per-step curves remain).
    assert (out / "results.json").stat().st_size < 0.5 * (out / "episodes/MiniWorld-YMaze-v0/0000.json").stat().st_size
    for name in ("report.md", "report.html", "plots/revisit_vs_time.png", "plots/cost_vs_length.png",
                 "plots/strips.png", "episodes/MiniWorld-YMaze-v0/0000.json"):
        assert (out / name).is_file(), name
    md = (out / "report.md").read_text()
    assert md.index("| strategy |") < md.index("## Plots")
    assert "<table>" in (out / "report.html").read_text()


def test_report_can_be_rebuilt_from_results(gt_run, capsys):
    """`rtfm-env eval report` recomputes the summary from results.json without running anything."""
    out, results = gt_run
    (out / "report.md").unlink()
    assert cli.main(["eval", "report", "--out", str(out)]) == 0
    assert (out / "report.md").is_file()
    rebuilt = json.loads((out / "results.json").read_text())
    before = json.loads(json.dumps(results["summary"]["headline"]["excursion"]))
    assert rebuilt["summary"]["headline"]["excursion"] == before
    assert cli.main(["eval", "report", "--out", str(out / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err


def _without_episodes(out, dest):
    """A copy of the evaluation ``out`` as it is committed: no episodes/ folder."""
    shutil.copytree(out, dest)
    shutil.rmtree(dest / "episodes")
    return dest


def test_report_is_rebuilt_from_the_summary_without_episodes(gt_run, tmp_path):
    """Without episodes/, `eval report` keeps the saved summary and the strips plot and writes the same page."""
    out, _ = gt_run
    assert cli.main(["eval", "report", "--out", str(out)]) == 0
    bare = _without_episodes(out, tmp_path / "bare")
    (bare / "report.md").unlink()
    assert cli.main(["eval", "report", "--out", str(bare)]) == 0
    assert (bare / "results.json").read_text() == (out / "results.json").read_text()
    assert (bare / "report.md").read_text() == (out / "report.md").read_text()
    assert (bare / "plots/strips.png").read_bytes() == (out / "plots/strips.png").read_bytes()
    # A compact results.json without its summary cannot be rebuilt from nothing.
    saved = json.loads((bare / "results.json").read_text())
    del saved["summary"]
    (bare / "results.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="no summary"):
        revisit.rebuild_report(bare)


def test_packed_episodes_recompute_the_summary(gt_run, tmp_path):
    """`eval report --pack` keeps the per-episode JSON compressed; without episodes/ the summary is recomputed."""
    out, _ = gt_run
    work = tmp_path / "work"
    shutil.copytree(out, work)
    assert cli.main(["eval", "report", "--out", str(work), "--pack"]) == 0
    first = (work / "episodes.tar.xz").read_bytes()
    assert cli.main(["eval", "report", "--out", str(work), "--pack"]) == 0
    assert (work / "episodes.tar.xz").read_bytes() == first  # reproducible: same episodes, same bytes
    bare = _without_episodes(work, tmp_path / "bare")
    saved = json.loads((bare / "results.json").read_text())
    saved["summary"] = {"headline": "stale"}  # must not be what the report shows
    (bare / "results.json").write_text(json.dumps(saved))
    rebuilt = revisit.rebuild_report(bare)
    assert len(rebuilt["episodes"]) == 1
    assert _json(rebuilt["summary"]) == json.loads((work / "results.json").read_text())["summary"]


def test_version_1_results_are_rewritten_compact(gt_run, tmp_path):
    """A results.json that embeds every episode (version 1) is rewritten as the compact summary, same numbers."""
    out, results = gt_run
    old = _without_episodes(out, tmp_path / "old")
    compact = json.loads((out / "results.json").read_text())
    v1 = {k: v for k, v in compact.items() if k not in ("n_episodes", "strips", "config_hash", "summary")}
    v1.update(version=1, summary={"headline": "stale"}, episodes=_json(results["episodes"]))
    (old / "results.json").write_text(json.dumps(v1))
    revisit.rebuild_report(old)
    rewritten = json.loads((old / "results.json").read_text())
    assert "episodes" not in rewritten and rewritten["version"] == RESULTS_VERSION
    assert rewritten["summary"] == compact["summary"] and rewritten["config_hash"] == compact["config_hash"]
    assert rewritten["n_episodes"] == 1 and rewritten["strips"] == compact["strips"]


def test_resume_skips_finished_episodes(gt_run, monkeypatch):
    """--resume runs only the episodes that are missing; finished ones are read back, not re-run."""
    out, _ = gt_run
    ran = []
    real = revisit.run_episode

    def counting(cfg, env, episode, *args, **kw):
        ran.append(episode)
        return real(cfg, env, episode, *args, **kw)

    monkeypatch.setattr(revisit, "run_episode", counting)
    before = (out / "episodes/MiniWorld-YMaze-v0/0000.json").read_bytes()
    results = evaluate(_gt_config(out, episodes=2), resume=True, progress=False)
    assert ran == [1]
    assert (out / "episodes/MiniWorld-YMaze-v0/0000.json").read_bytes() == before
    assert len(results["episodes"]) == 2 and "tour" not in results["episodes"][1]["trajectories"]


def test_existing_out_dir_is_refused(gt_run, tmp_path):
    """An existing output directory needs --resume or --overwrite; overwrite spares foreign files."""
    out, _ = gt_run
    with pytest.raises(FileExistsError, match="--resume"):
        evaluate(_gt_config(out), progress=False)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("keep me")
    with pytest.raises(FileExistsError, match="thesis.tex"):
        evaluate(_gt_config(foreign), overwrite=True, progress=False)
    assert (foreign / "thesis.tex").read_text() == "keep me"


def test_resume_with_other_settings_is_refused(gt_run):
    """--resume with a changed setting names it instead of mixing numbers."""
    out, _ = gt_run
    with pytest.raises(ConfigMismatchError, match="heading_tol"):
        evaluate(_gt_config(out, heading_tol=10.0), resume=True, progress=False)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"envs": ["Atlantis"]}, "valid ids"),
        ({"strategies": ["telepathy"]}, "valid strategies"),
        ({"kinds": ["spiral"]}, "valid kinds"),
        ({"episodes": 0}, "episodes"),
    ],
)
def test_bad_options_list_valid_choices(tmp_path, change, match):
    """Unknown env ids, strategies and kinds fail with the valid choices; nothing is written."""
    cfg = _gt_config(tmp_path / "out")
    for key, value in change.items():
        setattr(cfg, key, value)
    with pytest.raises(ValueError, match=match):
        evaluate(cfg, progress=False)
    assert not (tmp_path / "out").exists()


def test_checkpoint_that_does_not_match_is_refused(tmp_path):
    """A checkpoint for another resolution, a broken one, or another one on resume: clear errors."""
    cfg = RevisitConfig(out=str(tmp_path / "a"), envs=["YMaze"], strategies=["spatial"], resolution=32, **TINY)
    with pytest.raises(ValueError, match="resolution mismatch"):
        evaluate(cfg, progress=False)
    broken = tmp_path / "ckpt"
    broken.mkdir()
    (broken / "model.safetensors").write_bytes(b"not a tensor file")
    (broken / "config.json").write_text("{}")
    cfg = RevisitConfig(out=str(tmp_path / "b"), envs=["YMaze"], strategies=["spatial"], checkpoint=str(broken), **TINY)
    with pytest.raises(CheckpointError):
        evaluate(cfg, progress=False)
    # A finished evaluation of the shipped checkpoint cannot be resumed with another one.
    out = tmp_path / "c"
    out.mkdir()
    record = {"format": "rtfm-revisit-results", "version": 1, "identity": {},
              "checkpoint": {"path": "elsewhere", "sha256": "0" * 64}}
    (out / "config.json").write_text(json.dumps(record))
    cfg = RevisitConfig(out=str(out), envs=["YMaze"], strategies=["spatial"], **TINY)
    with pytest.raises(ConfigMismatchError, match="checkpoint that does not match"):
        evaluate(cfg, resume=True, progress=False)


def test_cli_refusals_exit_2_with_the_reason(gt_run, tmp_path, capsys):
    """`rtfm-env eval revisit` exits 2 naming the problem: existing --out, unknown env id."""
    out, _ = gt_run
    assert cli.main(["eval", "revisit", "--envs", "YMaze", "--strategies", "ground_truth", "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    code = cli.main(["eval", "revisit", "--envs", "Atlantis", "--out", str(tmp_path / "x"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "Atlantis" in err and "MiniWorld-YMaze-v0" in err


def test_user_world_reports_revisit_consistency_only(tmp_path, one_thread):
    """A saved world (no scene) gets revisit consistency and cost, and the report says GT is unavailable."""
    scene = MiniWorldScene("MiniWorld-YMaze-v0")
    try:
        start = scene.reset(0).pose()
        memory = SpatialMemory()
        for pose in turn_in_place(start, 4):
            memory.add(scene.render(pose), pose, scene.intrinsics, "observed", step=0)
    finally:
        scene.close()
    world = tmp_path / "world.safetensors"
    memory.save(world)
    cfg = RevisitConfig(out=str(tmp_path / "w"), world=str(world), episodes=1, strategies=["spatial"],
                        kinds=["turn360"], **TINY)
    results = evaluate(cfg, progress=False)
    traj = results["episodes"][0]["trajectories"]["turn360"]
    assert not results["ground_truth_available"] and "psnr_gt" not in traj["strategies"]["spatial"]
    rev = np.array(traj["strategies"]["spatial"]["revisit_psnr"], dtype=float)
    assert len(rev) == 1 and 5.0 < rev[0] <= PSNR_CAP  # one full turn: the last frame revisits the first
    assert "Ground-truth metrics are unavailable" in (tmp_path / "w" / "report.md").read_text()
    with pytest.raises(ValueError, match="no ground truth"):
        evaluate(RevisitConfig(out=str(tmp_path / "v"), world=str(world), strategies=["ground_truth"]), progress=False)


def test_companion_runs_join_the_headline_table(gt_run, tmp_path):
    """`eval report --with DIR` adds another evaluation's headline rows, linked, and keeps them on rebuild."""
    out, _ = gt_run
    other = tmp_path / "tour_only"
    evaluate(_gt_config(other, kinds=["tour"]), progress=False)
    assert cli.main(["eval", "report", "--out", str(out), "--with", str(other)]) == 0
    saved = json.loads((out / "results.json").read_text())
    assert saved["companions"] == [os.path.relpath(other, out)]
    md = (out / "report.md").read_text()
    assert f"({os.path.relpath(other, out)}/report.md)" in md and "families tour" in md
    assert cli.main(["eval", "report", "--out", str(out), "--with", str(tmp_path / "missing")]) == 2


def test_all_cap_lets_the_all_strategy_attend_to_more_frames(tmp_path, one_thread):
    """`all_cap` above max_context: `all` attends to more stored frames, which costs more per frame."""
    assert "all_cap" not in RevisitConfig().identity()  # evaluations from before the option still resume
    base = dict(envs=["YMaze"], episodes=1, strategies=["all"], kinds=["out_and_back"], **TINY)
    capped = evaluate(RevisitConfig(out=str(tmp_path / "c8"), **base), progress=False)
    wide = evaluate(RevisitConfig(out=str(tmp_path / "c16"), all_cap=16, **base), progress=False)
    assert RevisitConfig(all_cap=16).identity()["all_cap"] == 16
    row8 = capped["episodes"][0]["trajectories"]["out_and_back"]["strategies"]["all"]
    row16 = wide["episodes"][0]["trajectories"]["out_and_back"]["strategies"]["all"]
    assert row8["memory_frames"] == row16["memory_frames"] and row16["memory_frames"][-1] > 30
    # Up to 8 stored frames both see the same context; beyond, 16 views cost more and change the frames.
    assert row8["revisit_psnr"] != row16["revisit_psnr"]
    late8, late16 = np.median(row8["cpu_ms"][-20:]), np.median(row16["cpu_ms"][-20:])
    assert late16 > 1.15 * late8, (late8, late16)
    cost = json.loads((tmp_path / "c16" / "episodes" / "context_cost.json").read_text())
    assert cost["views"] == [1, 2, 4, 8, 16]
    assert "evenly thinned to 16 when more are stored" in (tmp_path / "c16" / "report.md").read_text()
    with pytest.raises(ValueError, match="all_cap must be None"):
        evaluate(RevisitConfig(out=str(tmp_path / "bad"), all_cap=0, **base), progress=False)


def test_gelu_form_is_part_of_what_an_evaluation_resumes_with():
    """Evaluations from before the option ran the tanh GELU: they resume with gelu='tanh' only."""
    assert "gelu" not in RevisitConfig(gelu="tanh").identity()
    assert RevisitConfig().identity()["gelu"] == RevisitConfig(gelu="none").identity()["gelu"] == "none"
    with pytest.raises(ValueError, match="unknown gelu 'relu'"):
        evaluate(RevisitConfig(out="unused", gelu="relu", **TINY), progress=False)


def test_warp_k_is_part_of_what_an_evaluation_resumes_with():
    """The spatial camera's warp_k is recorded as the value used, so a changed default does not resume."""
    from rtfm_env.cameras import DEFAULT_WARP_K

    assert RevisitConfig().identity()["warp_k"] == RevisitConfig(warp_k=DEFAULT_WARP_K).identity()["warp_k"]
    assert RevisitConfig(warp_k=2).identity()["warp_k"] == 2 != RevisitConfig().identity()["warp_k"]
    with pytest.raises(ValueError, match="warp_k must be None"):
        evaluate(RevisitConfig(out="unused", warp_k=1, k=2, **TINY), progress=False)


def test_warp_k_reaches_the_spatial_camera(tmp_path, monkeypatch):
    """--warp-k is passed to the spatial strategy's camera (and left to the default for the others)."""
    import rtfm_env.cameras as cameras

    built = {}

    class StopError(Exception):
        pass

    class Spy:
        def __init__(self, *args, **kwargs):
            built[kwargs["context_strategy"]] = kwargs.get("warp_k")
            if len(built) == 2:
                raise StopError

    monkeypatch.setattr(cameras, "ModelCamera", Spy)
    with pytest.raises(StopError):
        evaluate(RevisitConfig(out=str(tmp_path / "w"), envs=["YMaze"], episodes=1, strategies=["spatial", "last_k"],
                               warp_k=3, **TINY), progress=False)  # fmt: skip
    assert built == {"spatial": 3, "last_k": None}
