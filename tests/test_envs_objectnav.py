"""Tests of rtfm_env.envs.objectnav: RTFM/ObjectNav-v0's objects, success rule, metrics, checkers and oracle."""

from __future__ import annotations

import copy
import math
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import rtfm_env  # noqa: F401  (registers the RTFM/* ids)
from rtfm_env import worlds
from rtfm_env.envs.objectnav import OBJECT_KINDS, ObjectGoalFollower, ObjectNavEnv, ObjectScene, target_in_view
from rtfm_env.geometry import DiscreteAction
from rtfm_env.scenes import MiniWorldScene

STOP, FORWARD, LEFT, RIGHT = 0, 1, 2, 3


@pytest.fixture(scope="module")
def env():
    """One ObjectNav env (ground truth, goals within 5 m) shared by the module; MiniWorld envs are costly."""
    env = gym.make("RTFM/ObjectNav-v0", max_steps=120)
    env.unwrapped.task.max_goal_distance = 5.0
    yield env.unwrapped
    env.close()


def _walk_to_stop(env, follower) -> list[int]:
    """Step ``env`` with the follower's actions until it would stop; returns the actions taken."""
    actions = []
    while (action := follower.act(env.state)) != STOP:
        env.step(action)
        actions.append(action)
    return actions


def _checker_messages(env) -> list[str]:
    """Both checkers' warnings, less SB3's note on non-image, non-vector observations (the 4x4 pose, the depth map)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gym_check_env(env.unwrapped, skip_render_check=True, skip_close_check=True)
        sb3_check_env(env.unwrapped, warn=True)
    return [str(w.message) for w in caught if "has an unconventional shape" not in str(w.message)]


@pytest.mark.parametrize("camera", ["ground_truth", "reprojection"])
def test_both_checkers_pass(camera):
    """Gymnasium's and SB3's checkers pass without warnings (besides SB3's note on the 4x4 pose)."""
    extra = {"world": "image"} if camera == "reprojection" else {}  # a one-frame memory: the checkers reset often
    env = gym.make("RTFM/ObjectNav-v0", camera=camera, **extra)
    try:
        assert _checker_messages(env) == []
        assert env.observation_space["objectgoal"] == gym.spaces.Discrete(len(OBJECT_KINDS))
        assert "pointgoal" not in env.observation_space.spaces  # no GPS+compass: the task needs eyes
    finally:
        env.close()


def test_both_checkers_pass_with_the_model_camera(tiny_checkpoint, one_thread):
    """The checkers pass with the model camera (a tiny random-weight checkpoint, one-frame memory)."""
    env = gym.make(
        "RTFM/ObjectNav-v0", camera="model", checkpoint=str(tiny_checkpoint), sampling_steps=1, world="image"
    )
    try:
        assert _checker_messages(env) == []
    finally:
        env.close()


def test_objects_are_rendered_obstacles_placed_per_layout(env):
    """Four objects of distinct kinds, far from the start and apart, block motion and show in the ground truth."""
    obs, info = env.reset(seed=3)
    scene = env.scene
    objects = scene.objects
    assert isinstance(scene, ObjectScene) and len(objects) == 4 and len({o.kind for o in objects}) == 4
    start = np.array([env.state.x, env.state.z])
    for i, obj in enumerate(objects):
        assert np.hypot(*(obj.xz - start)) >= 2.0
        assert not scene.is_free(obj.x, obj.z) and not scene.is_free(obj.x + obj.radius + 0.3, obj.z)
        assert all(np.hypot(*(obj.xz - other.xz)) >= 2.0 for other in objects[i + 1 :])
    assert obs["objectgoal"] == objects[env.task.target].kind == info["target"]
    # The only movable entities are ours (FourRooms' own red box is gone).
    movable = [e for e in scene.miniworld_env.entities if e is not scene.miniworld_env.agent and not e.is_static]
    assert len(movable) == 4
    # Looking at an object from 2 m shows its colour.
    obj = objects[0]
    color = np.array(
        {
            "red": (255, 0, 0),
            "green": (0, 255, 0),
            "blue": (0, 0, 255),
            "yellow": (255, 255, 0),
            "purple": (112, 38, 194),
        }[OBJECT_KINDS[obj.kind].color]
    )
    free = [
        a
        for a in np.linspace(0, 2 * math.pi, 16, endpoint=False)
        if scene.is_free(*(obj.xz + 2.2 * np.array([np.cos(a), -np.sin(a)])))
    ]
    x, z = obj.xz + 2.2 * np.array([np.cos(free[0]), -np.sin(free[0])])
    state = env.state.replace(x=float(x), z=float(z), yaw=float(free[0] + math.pi))
    frame = scene.render(state.pose()).astype(int)
    assert (np.abs(frame - color).sum(axis=-1) < 90).sum() > 20
    assert target_in_view(scene, state, obj)


def test_determinism_and_objects_belong_to_the_layout():
    """reset(seed=s) reproduces observations and infos; a fixed layout keeps its objects across episodes."""
    env = gym.make("RTFM/ObjectNav-v0", scene_seed=7)
    try:
        core = env.unwrapped
        runs = []
        for _ in range(2):
            obs, info = env.reset(seed=11)
            steps = [env.step(a) for a in (FORWARD, LEFT, FORWARD, RIGHT)]
            runs.append((obs, info, steps, core.scene.objects))
        (o1, i1, s1, objs1), (o2, i2, s2, objs2) = runs
        np.testing.assert_array_equal(o1["rgb"], o2["rgb"])
        assert o1["objectgoal"] == o2["objectgoal"] and objs1 == objs2 and i1["goal"].tolist() == i2["goal"].tolist()
        for a, b in zip(s1, s2, strict=True):
            np.testing.assert_array_equal(a[0]["rgb"], b[0]["rgb"])
            assert a[1:4] == b[1:4] and a[4]["dtg"] == b[4]["dtg"]
        targets = set()
        for seed in range(6):
            env.reset(seed=seed)
            assert core.scene.objects == objs1  # same layout seed, same objects
            targets.add(core.task.target)
        assert len(targets) > 1  # the episode draws the target among them
    finally:
        env.close()


def test_scan_recording_holds_the_objects():
    """A memory camera's scan of an ObjectScene is rendered with the objects and cached apart from the bare layout's."""
    scan = worlds.ScanConfig(spacing=3.0, headings=4, max_frames=32)
    with_objects, bare = ObjectScene("MiniWorld-FourRooms-v0"), MiniWorldScene("MiniWorld-FourRooms-v0")
    try:
        start = bare.reset(5)
        assert with_objects.reset(5) == start
        rec_bare = worlds.recording(bare, "scan", start, scan)
        rec = worlds.recording(with_objects, "scan", start, scan)
        assert rec is not rec_bare
        for frame, pose in zip(rec.frames, rec.poses, strict=True):
            np.testing.assert_array_equal(frame, with_objects.render(pose))
        # Same poses except where the objects block the scan's points: and some frames show them.
        assert any(not np.array_equal(a, b) for a, b in zip(rec.frames, rec_bare.frames, strict=False))
    finally:
        with_objects.close()
        bare.close()


def test_oracle_succeeds_on_at_least_90_percent(env):
    """The ObjectNav oracle succeeds on >= 90% of 20 episodes, with SPL near 1."""
    results = []
    for seed in range(20):
        env.reset(seed=seed)
        follower = ObjectGoalFollower(env.scene, env.task)
        done = False
        while not done:
            _, _, terminated, truncated, info = env.step(follower.act(env.state))
            done = terminated or truncated
        results.append((info["success"], info["spl"]))
    success = np.mean([s for s, _ in results])
    assert success >= 0.9, results
    assert np.mean([spl for _, spl in results]) > 0.75


def test_stop_beside_the_target_facing_away_fails(env):
    """Within reach of the target but turned away from it, a stop fails (target not in view)."""
    env.reset(seed=1)
    _walk_to_stop(env, ObjectGoalFollower(env.scene, env.task))
    assert env.task.at_final_goal(env.state)  # facing it, a stop here would succeed
    for _ in range(12):  # 180 degrees
        env.step(LEFT)
    _, reward, terminated, _, info = env.step(STOP)
    assert terminated and not info["success"] and not info["target_in_view"]
    assert info["dtg"] == 0.0 and info["spl"] == 0.0  # in the view zone, yet no success
    assert reward < 0.0


def test_stop_at_the_wrong_object_fails(env):
    """Facing a distractor within reach of it, a stop fails; the same stop at the target would succeed."""
    env.reset(seed=2)
    task = env.task
    other = copy.copy(task)
    other.target = next(i for i in range(len(env.scene.objects)) if i != task.target)
    other.zone = env.scene.view_zone(other.target, task.success_distance)
    _walk_to_stop(env, ObjectGoalFollower(env.scene, other))
    assert other.at_final_goal(env.state)  # beside the distractor, looking at it
    _, _, terminated, _, info = env.step(STOP)
    assert terminated and not info["success"] and info["dtg"] > 0.0


def test_metrics_match_hand_computed_spl(env):
    """SPL = l / max(l, p) on a detour then the oracle; SoftSPL = (1 - d/l) l / max(l, p) on an early stop."""
    _, info = env.reset(seed=4)
    l_opt = env.task.zone.distance(np.array([env.state.x, env.state.z]))
    assert info["start_distance_to_goal"] == pytest.approx(l_opt) and l_opt > 0
    for action in (LEFT, LEFT, LEFT, FORWARD, FORWARD):  # a detour
        env.step(action)
    _walk_to_stop(env, ObjectGoalFollower(env.scene, env.task))
    *_, info = env.step(STOP)
    states = env.episode.states
    path = sum(math.hypot(b.x - a.x, b.z - a.z) for a, b in zip(states[:-1], states[1:], strict=True))
    assert info["success"] and info["path_length"] == pytest.approx(path)
    assert info["spl"] == pytest.approx(l_opt / max(l_opt, path)) and info["soft_spl"] == pytest.approx(info["spl"])

    env.reset(seed=4)
    for action in (FORWARD, FORWARD, STOP):
        *_, info = env.step(action)
    d = env.task.zone.distance(np.array([env.state.x, env.state.z]))
    path = env.episode.path_length
    assert not info["success"] and info["spl"] == 0.0 and info["dtg"] == pytest.approx(d)
    assert info["soft_spl"] == pytest.approx(min(max(1 - d / l_opt, 0.0), 1.0) * l_opt / max(l_opt, path))


def test_recorded_worlds_and_bad_arguments_are_refused(tmp_path):
    """A recorded world (no objects to find) and a bad success distance raise ValueError naming the problem."""
    from test_scenes_recorded import write_grid_world

    world = write_grid_world(tmp_path / "w.rtfm", np.ones((40, 40), dtype=bool))
    with pytest.raises(ValueError, match="recorded world"):
        gym.make("RTFM/ObjectNav-v0", world=str(world), camera="reprojection", resolution=16)
    with pytest.raises(ValueError, match="success_distance"):
        ObjectNavEnv(success_distance=0.0)
    assert DiscreteAction.STOP == STOP


def test_view_zone_distance_is_finite_from_a_pocket_the_grid_does_not_connect():
    """A pocket the grid graph leaves unconnected gets a finite distance to the target's view zone.

    The robot can still stand there; it gets the nearest connected cell's distance plus the gap,
    never inf (whose difference made NaN rewards that stopped PPO training).
    """
    from rtfm_env.envs.objectnav import PlacedObject, ViewZone
    from rtfm_env.scenes.grid import FreeSpace

    free = np.ones((20, 20), dtype=bool)  # 2 m x 2 m, 0.1 m cells; x = column, z = row
    free[5:8, 14:17] = False
    free[6, 15] = True  # a one-cell pocket at (x, z) = (1.55, 0.65), enclosed
    fs = FreeSpace(free, 0.0, 0.0, 0.1)
    zone = ViewZone(fs, np.zeros((0, 2, 2)), PlacedObject(kind=0, x=1.55, z=1.55, radius=0.1, height=1.0), 0.3)
    assert math.isinf(zone.field[fs.snap(np.array([1.55, 0.65]))])  # the graph does not reach it
    assert zone.distance(np.array([1.55, 1.35])) == pytest.approx(0.0)  # a view point
    below = zone.distance(np.array([1.55, 0.85]))  # just past the pocket's enclosure
    assert 0.0 < below < math.inf
    pocket = zone.distance(np.array([1.55, 0.65]))
    above = zone.distance(np.array([1.55, 0.45]))  # the other nearest connected cell, 0.2 m away too
    assert math.isfinite(pocket) and min(above, below) + 0.2 - 1e-9 <= pocket <= max(above, below) + 0.2 + 1e-9
    # with the object's side of the wall unreachable from everywhere the answer stays inf
    lone = np.zeros((20, 20), dtype=bool)
    lone[6, 15] = True
    zone = ViewZone(FreeSpace(lone, 0.0, 0.0, 0.1), np.zeros((0, 2, 2)),
                    PlacedObject(kind=0, x=1.55, z=0.65, radius=0.05, height=1.0), 0.2)  # fmt: skip
    assert zone.distance(np.array([1.55, 0.65])) == 0.0


def test_narrow_layouts_get_closer_spacing_and_roomy_ones_keep_theirs(monkeypatch):
    """A corridor layout too narrow for 2 m spacing gets a closer one, from the same seed; a roomy one is untouched."""
    from rtfm_env.envs import objectnav

    closest_start, closest_separation = objectnav.PLACEMENT_SPACINGS[-1]
    hall = ObjectScene("MiniWorld-Hallway-v0", width=32, height=32)
    room = ObjectScene("MiniWorld-OneRoom-v0", width=32, height=32)
    try:
        placed = {}
        for seed in range(8):
            start = hall.reset(seed)  # no layout of the corridor is refused
            xz = np.array([o.xz for o in hall.objects])
            assert len(hall.objects) == 4 and len({o.kind for o in hall.objects}) == 4
            gaps = np.hypot(*(xz[:, None] - xz[None]).transpose(2, 0, 1))[np.triu_indices(4, 1)]
            assert gaps.min() >= closest_separation - 1e-9
            assert np.hypot(*(xz - (start.x, start.z)).T).min() >= closest_start - 1e-9
            placed[seed] = hall.objects
            hall.reset(seed)
            assert hall.objects == placed[seed]  # the same seed places the same objects
        roomy = {seed: (room.reset(seed), room.objects)[1] for seed in range(3)}
        # With the first spacing alone, some corridor layouts are refused (they needed the closer
        # spacing), and the roomy layouts come out exactly as with the fallback in place.
        monkeypatch.setattr(objectnav, "PLACEMENT_SPACINGS", objectnav.PLACEMENT_SPACINGS[:1])
        refused = 0
        for seed in placed:
            try:
                hall.reset(seed)
            except RuntimeError as e:
                assert "even 2.0 m apart" in str(e)
                refused += 1
            else:
                assert hall.objects == placed[seed]  # a layout that fits the first spacing keeps it
        assert refused > 0
        for seed, objects in roomy.items():
            room.reset(seed)
            assert room.objects == objects
    finally:
        hall.close()
        room.close()


def test_a_scene_that_cannot_hold_the_objects_names_the_robot_radius():
    """RoomObjects widens its robot to 1.5 m: it cannot reach any object, and the error says why."""
    env = gym.make("RTFM/ObjectNav-v0", scene="MiniWorld-RoomObjects-v0")
    try:
        with pytest.raises(RuntimeError, match=r"robot of radius 1\.50 m.*roomier scene"):
            env.reset(seed=0)
    finally:
        env.close()
