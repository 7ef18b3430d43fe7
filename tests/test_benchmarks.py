"""Smoke tests of the benchmark scripts on tiny inputs: they run and write what they promise."""

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from rtfm_env.cameras import default_autocast
from rtfm_env.data import recorder as rec
from rtfm_env.model import FrameNetwork, model_config, save_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import memory as memory_bench  # noqa: E402
import quality as quality_bench  # noqa: E402
import recorded_worlds as recorded_worlds_bench  # noqa: E402
import speed as speed_bench  # noqa: E402
import vector as vector_bench  # noqa: E402
import world_reset as world_reset_bench  # noqa: E402

RES = 32

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def heldout(tmp_path_factory):
    """A real held-out recording: YMaze, 2 episodes x 16 frames at 32x32."""
    out = tmp_path_factory.mktemp("data") / "heldout"
    rec.record(rec.RecordConfig(envs=["YMaze"], episodes=2, steps=16, res=RES, split="heldout", out=str(out)),
               progress=False)
    return out


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A random-weight T model at 32x32."""
    cfg = model_config("T", height=RES, width=RES)
    directory = tmp_path_factory.mktemp("ckpt") / "tiny"
    save_checkpoint(directory, FrameNetwork(cfg), cfg, {"note": "random weights for a smoke test"})
    return directory


def test_memory_benchmark_writes_json_and_table(tmp_path):
    """The memory benchmark measures each size and writes JSON plus a Markdown table."""
    out = tmp_path / "memory.json"
    report = memory_bench.main(memory_bench.BenchConfig(sizes=(300,), queries=20, capacity=100, capacity_adds=250,
                                                        out=str(out)))
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(report))
    assert "300" in out.with_suffix(".md").read_text()
    assert saved["machine"]["cpu_count"] >= 1


def test_quality_benchmark_scores_model_and_baselines(tmp_path, heldout, checkpoint):
    """The quality benchmark scores model, copy and mean on held-out samples and draws a grid."""
    out = tmp_path / "quality.json"
    r = quality_bench.main(quality_bench.QualityConfig(checkpoint=str(checkpoint), data=str(heldout), samples=6,
                                                       batch=4, context_sweep=[1, 2], out=str(out)))
    assert json.loads(out.read_text())["two_views"]["copy"]["n"] == 6
    assert out.with_suffix(".png").stat().st_size > 1000
    for name in ("model", "copy", "mean"):
        assert 5.0 < r["two_views"][name]["mean"] < 100.0
    assert set(r["context_sweep"]) == {"1", "2"}
    assert math.isfinite(r["model_minus_copy_db"])


def test_quality_benchmark_sample_sigma_override(tmp_path, heldout):
    """--sample-sigma changes the model's frames (and only the model's), and is recorded in the config."""
    cfg = model_config("T", height=RES, width=RES)
    net = FrameNetwork(cfg)
    torch.manual_seed(0)
    with torch.no_grad():
        for param in net.parameters():  # the zero-initialised output layer would ignore its input
            param.add_(0.05 * torch.randn_like(param))
    checkpoint = save_checkpoint(tmp_path / "random", net, cfg)
    runs = [
        quality_bench.main(quality_bench.QualityConfig(checkpoint=str(checkpoint), data=str(heldout), samples=4,
                                                       batch=4, context_sweep=[1], sample_sigma=sigma,
                                                       out=str(tmp_path / f"q{sigma}.json")))
        for sigma in (0.0, 1.0)
    ]
    assert [r["config"]["sample_sigma"] for r in runs] == [0.0, 1.0]
    assert runs[0]["two_views"]["copy"] == runs[1]["two_views"]["copy"]
    assert runs[0]["two_views"]["model"]["mean"] != runs[1]["two_views"]["model"]["mean"]


def test_speed_benchmark_measures_frames_flops_and_memory(tmp_path, checkpoint):
    """The speed benchmark reports frames/s, FLOPs against a matmul, and the memory-size ratio."""
    out = tmp_path / "speed.json"
    r = speed_bench.main(speed_bench.SpeedConfig(checkpoint=str(checkpoint), resolution=RES, frames=4, batch=2,
                                                 big_memory=300, small_memory=10, variants="eager_tanh,eager",
                                                 repeats=2, out=str(out)))
    assert json.loads(out.read_text())["batched"]["batch"] == 2
    assert r["single_stream"]["frames_per_s"] > 0 and r["batched"]["frames_per_s"] > 0
    assert set(r["variants"]) == {"eager_tanh", "eager"} == set(r["targets_met"])
    assert r["variants"]["eager_tanh"]["camera_options"]["gelu"] == "tanh"
    # The default precision follows the hardware: bf16 runs the erf GELU, float32 the trained tanh.
    default_gelu = "none" if default_autocast("cpu") == "bfloat16" else "tanh"
    assert r["variants"]["eager"]["camera_options"]["gelu"] == default_gelu
    assert all(len(v["batched"]["runs_frames_per_s"]) == 2 for v in r["variants"].values())
    assert r["batched"] == r["variants"]["eager"]["batched"]
    with pytest.raises(ValueError, match=r"unknown speed variant \['fast'\]; valid variants"):
        speed_bench.main(speed_bench.SpeedConfig(checkpoint=str(checkpoint), variants="eager,fast", out=str(out)))
    assert r["flops"]["per_frame"] > 0 and 0 < r["flops"]["fraction_of_matmul"] < 10
    assert r["memory_size"]["ratio_big_over_small"] > 0
    rp = r["reprojection"]
    assert rp["single_stream"]["frames_per_s"] > 0 and rp["batched"]["batch"] == 2
    assert rp["camera_options"]["world"] == "scan" and rp["memory_frames"] > 10
    assert rp["target_met"] == (rp["single_stream"]["frames_per_s"] >= 300)


def test_vector_benchmark_times_native_sync_and_async(tmp_path, checkpoint):
    """The vector benchmark times all three vector envs with both cameras and records the async cap."""
    out = tmp_path / "vector.json"
    r = vector_bench.main(vector_bench.VectorBenchConfig(sizes=(1, 2), frames=2, min_steps=2, warmup_steps=1,
                                                         async_max_envs=1, checkpoint=str(checkpoint),
                                                         resolution=RES, out=str(out)))
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(r))
    cells = {(x["camera"], x["mode"], x["num_envs"]) for x in r["results"]}
    assert cells == {(c, m, n) for c in ("ground_truth", "model") for m in ("native", "sync", "async") for n in (1, 2)
                     if not (m == "async" and n == 2)}
    assert all(x["frames_per_s"] > 0 and x["frames"] == x["num_envs"] * x["steps"] for x in r["results"])
    assert {x["vector_env"] for x in r["results"]} == {"PointNavVectorEnv", "SyncVectorEnv", "AsyncVectorEnv"}
    assert [(s["mode"], s["num_envs"]) for s in r["skipped"]] == [("async", 2), ("async", 2)]
    assert r["model_camera"]["checkpoint"] == str(checkpoint)
    table = out.with_suffix(".md").read_text()
    assert "| 2 |" in table and "async capped at N <= 1" in table


def test_ros_node_benchmark_measures_rate_jitter_and_latency(tmp_path):
    """The ROS node benchmark runs a ground-truth node in a subprocess and reports its rate and cmd_vel latency."""
    pytest.importorskip("rclpy", reason="needs the ros extra: pip install -e '.[ros]'")
    import ros_node as ros_bench

    out = tmp_path / "ros_node.json"
    cfg = ros_bench.RosNodeConfig(cameras=["ground_truth"], rates=[10.0], seconds=2.0, latency_trials=2, out=str(out))
    r = ros_bench.main(cfg)
    assert json.loads(out.read_text()) == json.loads(json.dumps(r)) and r["config"]["rates"] == [10.0]
    (run,) = r["runs"]
    assert abs(run["published"]["rate_hz"] - 10.0) < 2.0 and run["received"]["frames"] >= 10
    lat = run["latency_ms"]
    # A command waits for the next frame at most one period (100 ms) plus rendering and transport.
    assert 0.0 < lat["image_of_moved_odom"]["mean"] < 1000.0 and len(run["trials"]) == 2
    assert lat["first_changed_image"]["mean"] >= lat["image_of_moved_odom"]["mean"] - 1e-6
    assert "| ground_truth | 10 |" in ros_bench.table(r)


def test_world_reset_benchmark_times_each_regime(tmp_path):
    """The world-reset benchmark times uncached and cached resets per regime and states the 2 s target."""
    out = tmp_path / "world_reset.json"
    r = world_reset_bench.main(
        world_reset_bench.WorldResetConfig(scene="MiniWorld-OneRoom-v0", resolution=32, layouts=1, repeats=1,
                                           regimes="image,walk", out=str(out))
    )
    assert set(r["results"]) == {"image", "walk"} and json.loads(out.read_text())["target_s"] == 2.0
    walk, image = r["results"]["walk"], r["results"]["image"]
    assert walk["frames_stored"]["min"] == 1 + r["walk_frames"] and image["frames_stored"]["min"] == 1
    assert walk["cached_s"]["median"] < walk["uncached_s"]["median"]  # the cache skips rendering
    assert "| walk |" in out.with_suffix(".md").read_text()
    with pytest.raises(ValueError, match=r"unknown regime \['maze'\]"):
        world_reset_bench.main(world_reset_bench.WorldResetConfig(regimes="maze", out=str(out)))


def test_recorded_worlds_benchmark_scores_a_built_world(tmp_path):
    """The recorded-worlds benchmark builds a world, drives it alone and scores it against unseen ground truth."""
    out = tmp_path / "recorded.json"
    r = recorded_worlds_bench.main(
        recorded_worlds_bench.RecordedWorldsConfig(
            envs="MiniWorld-YMaze-v0", cameras="reprojection", episodes=1, steps=10, closed_loop="missing.json",
            out=str(out),
        )
    )
    res = r["results"]["reprojection"]
    assert 10.0 < res["psnr"]["mean"] < 100.0 and 0.0 < res["sharpness"] < 2.0  # a real view, not a copy of truth
    assert "target_met" not in res  # no reference run given
    assert r["per_env"]["MiniWorld-YMaze-v0"]["method"] == "depth"
    assert "| reprojection |" in out.with_suffix(".md").read_text()
    # the page's image strip: the first walk at step 10, camera beside ground truth
    assert r["strips"] == {"MiniWorld-YMaze-v0": "recorded_YMaze.png"}
    assert (tmp_path / "recorded_YMaze.png").stat().st_size > 1000
    assert "![MiniWorld-YMaze-v0](recorded_YMaze.png)" in out.with_suffix(".md").read_text()
