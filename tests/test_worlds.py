"""Tests for rtfm_env.worlds: the image, walk and scan regimes, their cache, and world arguments."""

from pathlib import Path

import numpy as np
import pytest

from rtfm_env import worlds
from rtfm_env.geometry import pose_to_state
from rtfm_env.memory import SpatialMemory
from rtfm_env.scenes import MiniWorldScene
from rtfm_env.scenes.base import TopDownMap

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def scene():
    """A OneRoom layout at 32x32 (a small room: fast scans)."""
    scene = MiniWorldScene("MiniWorld-OneRoom-v0", width=32, height=32)
    scene.reset(3)
    yield scene
    scene.close()


def test_scan_poses_cover_free_floor_with_every_heading(scene):
    """Scan poses stand on free floor, each point with the configured headings, within max_frames."""
    cfg = worlds.ScanConfig(spacing=1.0, headings=6, max_frames=200)
    poses = worlds.scan_poses(scene, cfg)
    assert 6 <= len(poses) <= 200 and len(poses) % 6 == 0
    states = [pose_to_state(p) for p in poses]
    assert all(scene.is_free(s.x, s.z) for s in states)
    yaws = np.array([s.yaw for s in states[:6]])
    assert np.allclose(np.diff(np.unwrap(yaws)), 2 * np.pi / 6)
    assert np.array_equal(poses, worlds.scan_poses(scene, cfg))  # deterministic


def test_scan_coarsens_to_fit_max_frames(scene):
    """A tight max_frames widens the grid instead of exceeding the bound."""
    dense = worlds.scan_poses(scene, worlds.ScanConfig(spacing=0.5, headings=8, max_frames=10_000))
    bounded = worlds.scan_poses(scene, worlds.ScanConfig(spacing=0.5, headings=8, max_frames=64))
    assert len(dense) > 64 >= len(bounded) > 0


def test_scan_of_a_layout_without_free_space_is_a_clear_error():
    """A scene whose map has no free cell cannot be scanned: ValueError naming the scene and the way out."""

    class Walled:
        env_id, seed = "Walled-v0", 0

        def top_down_map(self):
            return TopDownMap(np.zeros((20, 20), bool), 0.0, 0.0, 0.1, np.zeros((20, 20, 3), np.uint8))

    with pytest.raises(ValueError, match=r"cannot scan scene 'Walled-v0'.*no free floor point.*world='image'"):
        worlds.scan_poses(Walled())


@pytest.mark.parametrize("kind", ["walk", "scan"])
def test_recordings_are_cached_and_deterministic(scene, kind):
    """The same layout gives the same cached recording; RGB-D frames match the scene's renders."""
    worlds.clear_cache()
    start = scene.start_state
    first = worlds.recording(scene, kind, start)
    assert worlds.recording(scene, kind, start) is first
    worlds.clear_cache()
    again = worlds.recording(scene, kind, start)
    assert again is not first and np.array_equal(again.frames, first.frames)
    assert np.array_equal(again.poses, first.poses)
    i = len(first.poses) // 2
    assert np.array_equal(first.frames[i], scene.render(first.poses[i]))
    assert np.allclose(first.depths[i], scene.render_depth(first.poses[i]))
    assert not first.frames.flags.writeable  # shared by every memory built from the cache
    if kind == "walk":
        assert len(first.poses) == worlds.WALK_FRAMES
        assert np.allclose(first.poses[0], start.pose())


def test_build_memory_per_regime(scene):
    """The image regime holds the start views; walk and scan add their observed RGB-D frames after them."""
    start = scene.start_state.pose()
    image = worlds.build_memory(scene, "image", start, seed_views=3)
    assert len(image) == 3 and image.has_depth(image.ids).all()
    assert np.array_equal(image.frames(image.ids[:1])[0], scene.render(start))
    walk = worlds.build_memory(scene, "walk", start)
    assert len(walk) == 1 + worlds.WALK_FRAMES
    assert set(walk.sources(walk.ids)) == {"observed"} and walk.has_depth(walk.ids).all()
    scan = worlds.build_memory(scene, "scan", start, depth=False)
    assert len(scan) == 1 + len(worlds.scan_poses(scene)) and not scan.has_depth(scan.ids).any()
    with pytest.raises(ValueError, match="memory_capacity=5 cannot hold"):
        worlds.build_memory(scene, "walk", start, capacity=5)
    with pytest.raises(ValueError, match=r"unknown world regime 'maze'.*\['image', 'walk', 'scan'\]"):
        worlds.build_memory(scene, "maze", start)


def test_world_arguments(tmp_path):
    """Regime names are not paths; a file path works with or without './'; anything else is refused."""
    assert worlds.world_path("scan") is None and worlds.check_world("walk") == "walk"
    path = tmp_path / "world.rtfm"
    SpatialMemory().save(path)
    assert worlds.check_world(path) == path
    assert worlds.world_path("world.rtfm") == Path("world.rtfm")
    with pytest.raises(ValueError, match=r"neither a regime \['image', 'walk', 'scan'\] nor an existing file"):
        worlds.check_world(str(tmp_path / "missing.rtfm"))
    for bad in (None, 3, True, ["scan"]):
        with pytest.raises(ValueError, match="world must be one of"):
            worlds.check_world(bad)
