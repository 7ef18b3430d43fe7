"""Tests for rtfm_env.eval.report (summary numbers and the report page)."""

import json
import math

import imageio.v2 as imageio
import numpy as np
import pytest

from rtfm_env.eval.report import TARGETS, strip_entries, summarize, write_report
from rtfm_env.eval.results import RevisitConfig, dumps

STRATEGIES = ["spatial", "last_k", "all"]
TOUR = 200


def _row(revisit_psnr, n, ms, psnr_gt=20.0):
    return {
        "revisit_psnr": revisit_psnr,
        "revisit_ssim": [0.5] * len(revisit_psnr),
        "wall_ms": [ms(i) for i in range(n)],
        "cpu_ms": [ms(i) for i in range(n)],
        "memory_frames": list(range(1, n + 1)),
        "psnr_gt": [psnr_gt] * n,
        "ssim_gt": [0.6] * n,
    }


def _episode(spatial, last_k):
    """A synthetic episode: known excursion revisit PSNRs, and a tour whose `all` cost doubles."""
    obb = {"n": 109, "revisits": [[50, 20], [108, 8]], "strategies": {
        "spatial": _row([25.0, spatial], 109, lambda i: 10.0),
        "last_k": _row([25.0, last_k], 109, lambda i: 10.0),
        "all": _row([25.0, 27.0], 109, lambda i: 10.0),
    }}
    tour = {"n": TOUR, "revisits": [[30, 5], [150, 5]], "strategies": {
        "spatial": _row([35.0, 33.0], TOUR, lambda i: 10.0),
        "last_k": _row([24.0, 22.0], TOUR, lambda i: 10.0),
        "all": _row([26.0, 26.0], TOUR, lambda i: 10.0 + 10.0 * i / TOUR),
    }}
    return {"env": "MiniWorld-YMaze-v0", "episode": 0, "ground_truth": True,
            "trajectories": {"out_and_back": obb, "tour": tour}}


@pytest.fixture
def summary():
    cfg = RevisitConfig(kinds=["out_and_back", "tour"], tour_steps=TOUR - 1)
    episodes = [_episode(31.0, 20.0), _episode(35.0, 22.0)]
    return episodes, cfg, summarize(episodes, STRATEGIES, cfg, timer="cpu")


def test_headline_numbers_are_means_and_standard_errors_over_episodes(summary):
    """The excursion headline takes each episode's anchor revisit: mean and SE over episodes."""
    _, _, summ = summary
    head = summ["headline"]
    assert head["excursion"]["spatial"]["mean"] == pytest.approx(33.0)
    assert head["excursion"]["spatial"]["se"] == pytest.approx(2.0)  # std 2.83 / sqrt(2)
    assert head["spatial_minus_last_k"]["mean"] == pytest.approx(12.0)
    assert len(head["targets"]) == 5  # no sharpness recorded in these episodes: no sharpness target
    psnr_target, gap_target = (next(t for t in head["targets"] if t["name"].startswith(start))
                               for start in ("revisit PSNR, spatial, after", "revisit PSNR, spatial minus"))
    assert psnr_target["met"] and psnr_target["target"] == TARGETS["excursion_psnr"]
    assert gap_target["met"] and gap_target["se"] == pytest.approx(1.0)  # differences 11 and 13


def test_grey_revisit_consistent_with_itself_misses_the_ground_truth_targets(summary):
    """A grey camera, consistent with itself, misses the revisit frame's ground-truth targets.

    It shows the same flat frame at the first visit and the revisit (100 dB of revisit PSNR).
    """
    episodes, cfg, _ = summary
    for ep in episodes:
        obb = ep["trajectories"]["out_and_back"]
        obb["sharpness_gt"] = [12.0] * obb["n"]
        for name, row in obb["strategies"].items():
            row["sharpness"] = [0.0 if name == "spatial" else 11.0] * obb["n"]  # spatial: flat grey
            row["revisit_psnr"][-1] = 100.0 if name == "spatial" else 25.0
            row["psnr_gt"] = [14.0 if name == "spatial" else 29.0] * obb["n"]
    head = summarize(episodes, STRATEGIES, cfg)["headline"]
    by_name = {t["name"].split(",")[0]: t for t in head["targets"]}
    assert by_name["revisit PSNR"]["met"]  # consistency alone is fooled
    gt_target = by_name["revisit frame against the ground truth"]
    assert not gt_target["met"] and gt_target["target"] == TARGETS["excursion_psnr_gt"]
    assert gt_target["gap"] == pytest.approx(TARGETS["excursion_psnr_gt"] - 14.0)
    sharp = by_name["revisit frame's sharpness over the ground truth's"]
    assert not sharp["met"] and sharp["value"] == pytest.approx(0.0)
    assert head["excursion_sharpness"]["last_k"]["mean"] == pytest.approx(11.0 / 12.0)


def test_cost_ratios_flat_and_growing(summary):
    """A constant cost gives ratio 1 (met); a cost that doubles along the tour shows its growth."""
    _, _, summ = summary
    cost = summ["headline"]["cost"]
    assert cost["spatial"]["ratio"] == pytest.approx(1.0) and cost["spatial"]["timer"] == "cpu_ms"
    assert cost["all"]["ratio"] > 1.5
    spatial_target = next(t for t in summ["headline"]["targets"] if t["name"].startswith("cost per frame, spatial"))
    assert spatial_target["met"]


def test_missed_target_says_by_how_much(summary):
    """A revisit PSNR below the target is reported missed, with the gap."""
    episodes, cfg, _ = summary
    for ep in episodes:
        ep["trajectories"]["out_and_back"]["strategies"]["spatial"]["revisit_psnr"][-1] = 27.5
    head = summarize(episodes, STRATEGIES, cfg)["headline"]
    t = head["targets"][0]
    assert not t["met"] and t["gap"] == pytest.approx(2.5)
    assert "missed by 2.50" in head["lines"][0]


def test_revisit_curve_bins_by_time_since_first_visit(summary):
    """Revisits land in the bin of their steps since the first visit."""
    _, _, summ = summary
    d = summ["revisit_vs_dt"]["spatial"]
    edges = d["edges"]
    b = next(i for i in range(len(edges) - 1) if edges[i] <= 100 < edges[i + 1])  # dt = 108 - 8
    assert d["mean"][b] == pytest.approx(33.0) and d["n"][b] == 2
    assert all(math.isnan(m) for m, n in zip(d["mean"], d["n"], strict=True) if n == 0)


def _compact(cfg, summ, episodes, strips=()):
    """A compact results.json as the evaluator writes it: the summary, no episode records."""
    return {"config": {**cfg.__dict__}, "strategies": STRATEGIES, "envs": ["MiniWorld-YMaze-v0"],
            "n_episodes": len(episodes), "strips": list(strips),
            "checkpoint": {"path": "ckpt", "sha256": "ab" * 32, "step": 1},
            "machine": {"platform": "test", "cpu_count": 2, "torch": "x", "torch_threads": 1, "cuda": None,
                        "load_average_1min": 0.5},
            "ground_truth_available": True, "context_cost": {"views": [1, 2, 4, 8], "ms": [5.0, 7.0, 11.0, 19.0]},
            "summary": summ}


def test_report_puts_the_headline_table_first(summary, tmp_path):
    """report.md and report.html open with the headline table, then embed the plots they wrote."""
    episodes, cfg, summ = summary
    results = _compact(cfg, summ, episodes)
    write_report(results, tmp_path)
    md = (tmp_path / "report.md").read_text()
    first_table = md.index("|")
    assert md[first_table:].startswith("| headline |") and first_table < md.index("## Plots")
    for line in ("revisit_vs_time.png", "cost_vs_length.png", "psnr_along_trajectory.png"):
        assert line in md and (tmp_path / "plots" / line).is_file()
    page = (tmp_path / "report.html").read_text()
    assert page.index("<table>") < page.index("<h2>Plots</h2>")
    assert np.isfinite(summ["headline"]["excursion"]["all"]["mean"])


def test_all_target_needs_a_cap_above_the_early_window(summary):
    """A cap reached before the early window cannot show growth: the target is left out; a larger cap keeps it."""
    episodes, cfg, _ = summary
    early = summarize(episodes, STRATEGIES, cfg, cap=8)["headline"]
    assert not any(t["name"].startswith("cost per frame, all") for t in early["targets"])
    wide = summarize(episodes, STRATEGIES, cfg, cap=150)["headline"]
    row = next(t for t in wide["targets"] if t["name"].startswith("cost per frame, all"))
    assert row["name"] == "cost per frame, all (capped at 150 frames), same ratio: must grow"
    assert row["met"] and row["value"] > 1.5


def test_report_is_drawn_from_the_compact_summary_alone(summary, tmp_path):
    """Without any episode record the page shows the summary's numbers; the strips plot needs their PNGs."""
    episodes, cfg, summ = summary
    for ep in episodes:
        ep["strip"] = {"strategies": STRATEGIES, "first": 8, "revisit": 108,
                       "file": f"episodes/MiniWorld-YMaze-v0/{ep['episode']:04d}.png"}
    strips = strip_entries(episodes, ["MiniWorld-YMaze-v0", "MiniWorld-Sign-v0"])
    assert strips == [{"env": "MiniWorld-YMaze-v0", "episode": 0, **episodes[0]["strip"]}]
    results = json.loads(dumps(_compact(cfg, summ, episodes, strips)))  # as read back from results.json
    assert "episodes" not in results
    write_report(results, tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "(2 in all)" in md and "33.00 ± 2.00" in md  # the excursion's mean ± SE over the 2 episodes
    assert "strips.png" not in md and not (tmp_path / "plots" / "strips.png").exists()  # no PNG, no plot

    png = tmp_path / strips[0]["file"]
    png.parent.mkdir(parents=True)
    imageio.imwrite(png, np.full((3 * 66 - 2, 3 * 66 - 2, 3), 128, dtype=np.uint8))
    write_report(results, tmp_path)
    plot = tmp_path / "plots" / "strips.png"
    assert "plots/strips.png" in (tmp_path / "report.md").read_text() and plot.is_file()
    # The per-episode PNGs gone (a folder committed without episodes/): the plot drawn before stays.
    png.unlink()
    before = plot.read_bytes()
    write_report(results, tmp_path)
    assert plot.read_bytes() == before and "plots/strips.png" in (tmp_path / "report.md").read_text()


def test_results_json_keeps_curves_on_one_line():
    """Lists of numbers take one line each (the per-step curves), and the JSON reads back, NaN included."""
    obj = {"summary": {"along": {"spatial": [1.5, None, 2.0]}, "se": [float("nan"), 1.0]},
           "strips": [{"env": "a", "first": 1}], "empty": [], "nested": {}}
    text = dumps(obj)
    assert '"spatial": [1.5, null, 2.0]' in text and '"se": [NaN, 1.0]' in text
    assert '"strips": [\n' in text  # lists of objects are laid out like json.dumps(indent=1)
    back = json.loads(text)
    assert math.isnan(back["summary"]["se"][0])
    back["summary"]["se"][0] = obj["summary"]["se"][0] = None
    assert back == obj
