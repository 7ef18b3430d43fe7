"""Tests of benchmarks/closed_loop.py on a tiny budget: one held-out env, two regimes, 28 steps."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from rtfm_env.data.shards import sha256_file
from rtfm_env.eval.metrics import PSNR_CAP

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import closed_loop  # noqa: E402

RES = 64  # the held-out scenes' default resolution; MS-SSIM's 5 scales need more than 32 pixels

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint):
    """A tiny random-weight checkpoint (size T, 64x64) whose output depends on its inputs and noise."""
    return tiny_checkpoint


@pytest.fixture(scope="module")
def run(tmp_path_factory, checkpoint):
    """One tiny run of every camera: YMaze, 1 episode, image and scan, 28 steps (the revisit at step 26)."""
    out = tmp_path_factory.mktemp("closed_loop")
    cfg = closed_loop.ClosedLoopConfig(
        envs=["MiniWorld-YMaze-v0"],
        regimes=["image", "scan"],
        episodes=1,
        steps=28,
        out_steps=1,
        checkpoint=str(checkpoint),
        out=str(out),
        progress=False,
    )
    return closed_loop.main(cfg), out


def test_json_schema_and_files(run, checkpoint):
    """The JSON holds config, machine, checkpoint hash and every aggregate; the page and PNGs are written."""
    result, out = run
    saved = json.loads((out / "closed_loop.json").read_text())
    assert saved == json.loads(json.dumps(result))
    assert saved["cameras"] == ["flat", "nearest", "reprojection", "model", "ground_truth"]
    assert saved["config"]["steps"] == 28 and saved["machine"]["cpu_count"] >= 1
    assert saved["checkpoints"]["model"]["sha256"] == sha256_file(Path(checkpoint) / "model.safetensors")
    for cam in saved["cameras"]:
        for regime in ("image", "scan"):
            assert set(saved["windows"][cam][regime]) == {"1-10", "11-50"}  # 51-200 lies past step 28
            for cell in saved["windows"][cam][regime]["1-10"].values():
                assert set(cell) == {"mean", "se", "n"} and cell["n"] == 1
            assert len(saved["curves"][cam][regime]["psnr"]) == 29  # steps 0..28
            assert saved["revisits"][cam][regime]["psnr_vs_gt"]["n"] == 1
            assert (saved["speed"][cam][regime]["step_s"] is None) == (cam == "flat")
    (episode,) = saved["episodes"]
    assert episode["revisit_step"] == 1 + 12 + 1 + 12  # out, half turn, back, half turn
    assert episode["revisit_gap"][0] <= 0.1 and episode["revisit_gap"][1] <= 5.0
    for name in saved["files"]:
        assert (out / name).is_file(), name
    assert all((out / n).stat().st_size < 150_000 for n in saved["files"] if n.endswith(".png"))
    page = (out / "closed_loop.md").read_text()
    assert page.index("| flat |") < page.index("| model |") < page.index("| ground_truth |")  # baselines first
    assert "benchmarks/closed_loop.py" in page
    assert set(saved["fine"]["model"]) == {"image", "scan"}
    assert list(saved["fine"]["model"]["scan"]["MiniWorld-YMaze-v0"]) == ["1-20", "21-28"]
    assert "| scan, YMaze |" in page


def test_ground_truth_scores_the_cap_and_unit_ratios(run):
    """Ground truth against itself: the PSNR cap, SSIM and MS-SSIM 1, sharpness and contrast ratios 1."""
    result, _ = run
    for regime in ("image", "scan"):
        for window in result["windows"]["ground_truth"][regime].values():
            assert window["psnr"]["mean"] == PSNR_CAP
            for metric in ("ssim", "ms_ssim", "sharpness", "contrast"):
                assert window[metric]["mean"] == pytest.approx(1.0)
        assert result["revisits"]["ground_truth"][regime]["psnr_vs_gt"]["mean"] == PSNR_CAP


def test_flat_is_sharpless_and_consistent(run):
    """The flat frame has no gradient or contrast, and 'revisits' perfectly (consistency is not fidelity)."""
    result, _ = run
    for regime in ("image", "scan"):
        for window in result["windows"]["flat"][regime].values():
            assert window["sharpness"]["mean"] == pytest.approx(0.0, abs=1e-9)
            assert window["contrast"]["mean"] == pytest.approx(0.0, abs=1e-9)
        assert result["revisits"]["flat"][regime]["psnr_vs_first"]["mean"] == PSNR_CAP
        assert result["revisits"]["flat"][regime]["psnr_vs_gt"]["mean"] < 30.0


def test_reprojection_beats_flat_in_the_scan_regime(run):
    """With a dense scan in memory, the no-learning reprojection camera beats a flat frame in every window."""
    result, _ = run
    for name, window in result["windows"]["reprojection"]["scan"].items():
        flat = result["windows"]["flat"]["scan"][name]
        assert window["psnr"]["mean"] > flat["psnr"]["mean"] + 1.0, name
        assert window["sharpness"]["mean"] > 0.5, name
    assert set(result["differences"]["model"]["scan"]["1-10"]) == set(closed_loop.METRICS)


def test_discussion_survives_a_rewrite(tmp_path):
    """The hand-written discussion between the markers is read back so a rerun keeps it."""
    page = tmp_path / "closed_loop.md"
    page.write_text(f"# t\n\n{closed_loop.DISCUSSION_BEGIN}\nThe model goes grey.\n{closed_loop.DISCUSSION_END}\n")
    assert closed_loop.read_discussion(page) == "The model goes grey."
    assert closed_loop.read_discussion(tmp_path / "missing.md") == ""


def test_window_ratio_is_a_ratio_of_sums():
    """A window's sharpness ratio is sum(frame) / sum(truth), so one featureless truth frame cannot blow it up."""
    per_step = {m: np.ones(5) for m in closed_loop.METRICS}
    truth = {"sharpness": np.array([9.0, 0.0, 1.0, 1.0, 2.0]), "contrast": np.ones(5)}
    values = closed_loop.window_values(per_step, truth, 1, 4)
    assert values["sharpness"] == pytest.approx(4.0 / 4.0)
    assert values["contrast"] == pytest.approx(1.0)


def test_fine_windows_are_per_env_and_paired():
    """The per-env fine table: 20-step windows through step 200, ΔPSNR paired by episode, sharpness ratio of sums."""
    assert closed_loop.fine_windows(220)[0] == ("1-20", 1, 20) and closed_loop.fine_windows(220)[-1][0] == "181-200"
    assert [w[0] for w in closed_loop.fine_windows(28)] == ["1-20", "21-28"]
    steps = 41
    mine = [{"psnr": np.full(steps, 20.0), "sharpness": np.full(steps, 2.0)},
            {"psnr": np.full(steps, 30.0), "sharpness": np.full(steps, 1.0)},
            {"psnr": np.full(steps, 25.0), "sharpness": np.full(steps, 1.0)}]
    mine[0]["psnr"][21:] = 10.0  # env A's first episode drifts after step 20
    base = [{"psnr": np.full(steps, 21.0)}, {"psnr": np.full(steps, 29.0)}, {"psnr": np.full(steps, 25.0)}]
    truths = [{"sharpness": np.full(steps, 2.0)}, {"sharpness": np.full(steps, 2.0)}, {"sharpness": np.ones(steps)}]
    fine = closed_loop.fine_differences(mine, base, truths, ["A", "A", "B"], steps - 1)
    assert list(fine) == ["A", "B"] and list(fine["A"]) == ["1-20", "21-40"]
    assert fine["A"]["1-20"]["dpsnr"] == pytest.approx(0.0)  # (-1 + 1) / 2
    assert fine["A"]["21-40"]["dpsnr"] == pytest.approx((-11.0 + 1.0) / 2)
    assert fine["A"]["1-20"]["sharpness"] == pytest.approx(3.0 / 4.0)
    assert fine["B"]["21-40"] == {"dpsnr": 0.0, "sharpness": 1.0}


def test_bad_options_fail_with_the_choices():
    """Unknown cameras, regimes and malformed --model rows raise ValueError naming what is valid."""
    with pytest.raises(ValueError, match="valid cameras"):
        closed_loop.check_config(closed_loop.ClosedLoopConfig(cameras=["lpips"]))
    with pytest.raises(ValueError, match="valid regimes"):
        closed_loop.check_config(closed_loop.ClosedLoopConfig(regimes=["room"]))
    with pytest.raises(ValueError, match="NAME=DIR"):
        closed_loop.check_config(closed_loop.ClosedLoopConfig(models=["nodir"]))
    for bad in ("a=dir,k=0", "a=dir,k=x", "a=dir,n=4", "a=dir,k=2,k=3"):
        with pytest.raises(ValueError, match=r"NAME=DIR\[,k=N\]"):
            closed_loop.check_config(closed_loop.ClosedLoopConfig(models=[bad]))
    cfg = closed_loop.ClosedLoopConfig(models=["wide=some/dir,k=4", "plain=other", "warped=d,k=2,warp_k=4"])
    assert closed_loop.model_rows(cfg)["wide"] == Path("some/dir")
    assert closed_loop.model_context(cfg) == {"wide": {"k": 4}, "warped": {"k": 2, "warp_k": 4}}
    seeds = closed_loop.episode_seeds(0, "MiniWorld-YMaze-v0", 0)
    assert len(set(seeds)) == 3 and seeds != closed_loop.episode_seeds(0, "MiniWorld-YMaze-v0", 1)
