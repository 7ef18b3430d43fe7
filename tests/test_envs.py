"""Tests of rtfm_env.envs.base and pointnav: every id's contract (both cameras), PointNav's logic, bad input."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import gymnasium as gym
import imageio.v3 as iio
import numpy as np
import pytest
from gymnasium.envs.registration import load_env_creator
from gymnasium.utils.env_checker import check_env as gym_check_env
from gymnasium.wrappers import RecordVideo
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import rtfm_env  # noqa: F401  (registers the RTFM/* ids)
from rtfm_env.cameras import GroundTruthCamera
from rtfm_env.envs import PointNavEnv, PointNavTask
from rtfm_env.envs.follower import ShortestPathFollower
from rtfm_env.geometry import RobotState, angle_difference
from rtfm_env.scenes import MiniWorldScene

RTFM_IDS = sorted(k for k in gym.registry if k.startswith("RTFM/"))
CAMERA_NAMES = ["ground_truth", "model", "reprojection"]
COMMON_KWARGS = {"camera", "k", "context_strategy", "resolution", "scene"}
INFO_KEYS = {"success", "spl", "soft_spl", "distance_to_goal", "collisions", "path_length", "collided", "steps"}
STOP, FORWARD, LEFT, RIGHT = 0, 1, 2, 3


@pytest.fixture(scope="module")
def env():
    """One PointNav env (default kwargs) shared by the module; MiniWorld envs are costly to create."""
    env = gym.make("RTFM/PointNav-v0")
    yield env.unwrapped
    env.close()


@pytest.fixture
def make_env():
    """Factory of extra envs that are closed after the test (their MiniWorld envs go back to the pool)."""
    made = []

    def make(**kwargs):
        e = gym.make("RTFM/PointNav-v0", **kwargs)
        made.append(e)
        return e

    yield make
    for e in made:
        e.close()


def _rollout(env, seed: int, actions: list[int]) -> list[tuple]:
    obs, info = env.reset(seed=seed)
    return [(obs, 0.0, False, False, info)] + [env.step(a) for a in actions]


# ---------------------------------------------------------------------------------------
# Registration and the Gymnasium / Stable-Baselines3 contracts
# ---------------------------------------------------------------------------------------


def test_pointnav_registered_on_import():
    """Importing rtfm_env registers RTFM/PointNav-v0 with its env class as entry point."""
    assert "RTFM/PointNav-v0" in RTFM_IDS
    env = gym.make("RTFM/PointNav-v0")
    try:
        assert isinstance(env.unwrapped, PointNavEnv)
        assert env.unwrapped.scene.env_id == "MiniWorld-FourRooms-v0"
    finally:
        env.close()


def test_every_task_is_registered():
    """The four task ids are registered, each with a native vector entry point."""
    assert {"RTFM/PointNav-v0", "RTFM/ImageNav-v0", "RTFM/Explore-v0", "RTFM/Revisit-v0"} <= set(RTFM_IDS)
    for env_id in RTFM_IDS:
        assert gym.spec(env_id).vector_entry_point is not None


@pytest.mark.parametrize("camera", CAMERA_NAMES)
@pytest.mark.parametrize("env_id", RTFM_IDS)
def test_gymnasium_check_env_without_warnings(env_id, camera, one_thread):
    """Every registered RTFM env passes Gymnasium's checker, render check included, with both cameras and no warning."""
    env = gym.make(env_id, camera=camera, render_mode="rgb_array")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            # Model frames are stochastic but seeded from the env, so the determinism checks
            # run as they do for the ground truth (no nondeterministic flag).
            gym_check_env(env.unwrapped, skip_render_check=False)
    finally:
        env.close()
    assert [str(w.message) for w in caught] == []


@pytest.mark.parametrize("camera", CAMERA_NAMES)
@pytest.mark.parametrize("env_id", RTFM_IDS)
def test_sb3_check_env(env_id, camera, one_thread):
    """Every RTFM env passes Stable-Baselines3's checker with both cameras; its only remark is the 4x4 pose."""
    env = gym.make(env_id, camera=camera)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            sb3_check_env(env.unwrapped, warn=True)
    finally:
        env.close()
    messages = [str(w.message) for w in caught]
    # The pose is a 4x4 matrix by design (camera-to-world, as everywhere in rtfm-sim); SB3
    # suggests flattening such observations, which a policy's feature extractor can do.
    unavoidable = [m for m in messages if "observation pose has an unconventional shape" in m]
    assert len(unavoidable) == 1
    assert [m for m in messages if m not in unavoidable] == []


@pytest.mark.parametrize("env_id", RTFM_IDS)
def test_model_camera_is_seeded(env_id, one_thread):
    """With the model camera, the same seed and actions give identical observations, rewards and infos."""
    actions = [FORWARD, LEFT, FORWARD, FORWARD, RIGHT, FORWARD]
    env = gym.make(env_id, camera="model")
    try:
        first = _rollout(env, 21, actions)
        other = _rollout(env, 22, actions)
        second = _rollout(env, 21, actions)
        truth = env.unwrapped.scene.render(env.unwrapped.state.pose())
    finally:
        env.close()
    for (obs_a, *rest_a, info_a), (obs_b, *rest_b, info_b) in zip(first, second, strict=True):
        assert obs_a.keys() == obs_b.keys()
        for key in obs_a:
            np.testing.assert_array_equal(obs_a[key], obs_b[key])
        assert rest_a == rest_b
        assert info_a.keys() == info_b.keys()
        for key in info_a:
            np.testing.assert_array_equal(info_a[key], info_b[key])
    assert not np.array_equal(first[-1][0]["rgb"], other[-1][0]["rgb"])
    # After moving, the view is generated: it is not the scene's ground truth.
    assert not np.array_equal(second[-1][0]["rgb"], truth)


@pytest.mark.parametrize("env_id", RTFM_IDS)
def test_common_kwargs_reach_the_camera_and_scene(env_id, one_thread):
    """camera, k, context_strategy, resolution and scene are gym.make kwargs of every id and take effect."""
    assert COMMON_KWARGS <= load_env_creator(gym.spec(env_id).entry_point).argument_names()
    env = gym.make(env_id, camera="model", k=1, context_strategy="last_k", scene="MiniWorld-YMaze-v0", resolution=64)
    try:
        obs, _ = env.reset(seed=0)
        base = env.unwrapped
        assert base.scene.env_id == "MiniWorld-YMaze-v0"
        assert base.camera.k == 1 and base.camera.context_strategy == "last_k"
        assert obs["rgb"].shape == (64, 64, 3)
    finally:
        env.close()


@pytest.mark.parametrize("env_id", RTFM_IDS)
def test_resolution_sets_every_image(env_id):
    """The resolution argument sets the view (and any image observation) and the observation space."""
    env = gym.make(env_id, resolution=32)
    try:
        obs, _ = env.reset(seed=0)
        obs, *_ = env.step(FORWARD)
        for key, space in env.observation_space.spaces.items():
            if isinstance(space, gym.spaces.Box) and space.dtype == np.uint8:
                assert obs[key].shape == (32, 32, 3), key
        assert obs in env.observation_space
    finally:
        env.close()


@pytest.mark.parametrize("env_id", RTFM_IDS)
def test_record_video_writes_every_frame(env_id, tmp_path: Path):
    """RecordVideo records a short episode of every id to a video with one frame per reset and step."""
    steps = 5
    folder = tmp_path / "videos"  # RecordVideo makes it (and warns when it already exists)
    env = RecordVideo(
        gym.make(env_id, render_mode="rgb_array", max_steps=steps),
        str(folder),
        episode_trigger=lambda episode: True,
        name_prefix="episode",
    )
    try:
        env.reset(seed=0)
        done = False
        while not done:
            _, _, terminated, truncated, _ = env.step(LEFT)
            done = terminated or truncated
        expected = env.unwrapped.render()
    finally:
        env.close()
    videos = sorted(folder.glob("*.mp4"))
    assert [v.name for v in videos] == ["episode-episode-0.mp4"]
    frames = list(iio.imiter(videos[0]))
    assert len(frames) == steps + 1
    assert frames[-1].shape == expected.shape
    # Lossy H.264, so the last frame matches the last render only roughly.
    assert np.mean(np.abs(frames[-1].astype(float) - expected.astype(float))) < 10.0


def test_observation_matches_world(env):
    """The rgb entry is the ground truth at the pose, pose is the robot's camera, pointgoal aims at the goal."""
    obs, info = env.reset(seed=3)
    for action in (FORWARD, LEFT, FORWARD, RIGHT):
        obs, _, _, _, info = env.step(action)
    assert obs in env.observation_space
    state = env.state
    np.testing.assert_array_equal(obs["rgb"], env.scene.render(state.pose()))
    np.testing.assert_allclose(obs["pose"], state.pose(), atol=1e-6)
    assert obs["pose"].dtype == np.float32 and obs["rgb"].dtype == np.uint8
    goal = info["goal"]
    assert obs["pointgoal"][0] == pytest.approx(math.hypot(goal[0] - state.x, goal[1] - state.z), abs=1e-5)
    assert INFO_KEYS <= set(info)
    assert info["distance_to_goal"] == pytest.approx(env.scene.geodesic_distance(np.array([state.x, state.z]), goal))


@pytest.mark.parametrize(
    ("yaw", "goal", "distance", "heading"),
    [
        (0.0, (2.0, 0.0), 2.0, 0.0),  # straight ahead (yaw 0 faces +x)
        (0.0, (0.0, -1.0), 1.0, math.pi / 2),  # left of +x is -z
        (0.0, (0.0, 1.0), 1.0, -math.pi / 2),
        (0.0, (-3.0, 0.0), 3.0, -math.pi),  # behind: the range is [-pi, pi)
        (math.pi / 2, (0.0, -2.0), 2.0, 0.0),  # yaw pi/2 faces -z
        (math.pi / 2, (-1.0, 0.0), 1.0, math.pi / 2),
        (-math.pi / 4, (1.0, 1.0), math.sqrt(2.0), 0.0),
    ],
)
def test_pointgoal_distance_and_heading(yaw, goal, distance, heading):
    """The pointgoal is (Euclidean distance, heading) in the agent's frame; positive heading is to the left."""
    task = PointNavTask()
    task.goal = np.array(goal)
    pointgoal = task.pointgoal(RobotState(0.0, 0.0, yaw))
    assert pointgoal.dtype == np.float32
    assert pointgoal[0] == pytest.approx(distance, abs=1e-6)
    assert pointgoal[1] == pytest.approx(heading, abs=1e-6)


@pytest.mark.parametrize(("action", "sign"), [(LEFT, -1.0), (RIGHT, 1.0)])
def test_turning_shifts_heading_by_the_turn_step(env, action, sign):
    """Turning left moves the goal 15 degrees to the right in the agent's frame, and vice versa."""
    obs, _ = env.reset(seed=5)
    before = float(obs["pointgoal"][1])
    obs, reward, _, _, info = env.step(action)
    after = float(obs["pointgoal"][1])
    assert angle_difference(after, before) == pytest.approx(sign * math.radians(15.0), abs=1e-5)
    assert reward == pytest.approx(-0.01)  # no progress, only the slack cost
    assert info["path_length"] == 0.0


# ---------------------------------------------------------------------------------------
# Seeding
# ---------------------------------------------------------------------------------------


def test_reset_seed_reproduces_episode(env):
    """reset(seed=s) reproduces the layout, start, goal, observations, rewards and infos."""
    actions = [FORWARD, FORWARD, LEFT, FORWARD, RIGHT, RIGHT, FORWARD]
    first = _rollout(env, 11, actions)
    _rollout(env, 12, actions)  # another episode in between must leave no trace
    second = _rollout(env, 11, actions)
    for (obs_a, *rest_a, info_a), (obs_b, *rest_b, info_b) in zip(first, second, strict=True):
        assert obs_a.keys() == obs_b.keys()
        for key in obs_a:
            np.testing.assert_array_equal(obs_a[key], obs_b[key])
        assert rest_a == rest_b  # reward, terminated, truncated
        np.testing.assert_array_equal(info_a.pop("goal"), info_b.pop("goal"))
        assert info_a == info_b


def test_different_seeds_give_different_episodes(env):
    """Different reset seeds draw different layouts, goals and first views."""
    episodes = []
    for seed in (0, 1, 2):
        obs, info = env.reset(seed=seed)
        episodes.append((info["scene_seed"], tuple(info["goal"]), obs["rgb"].tobytes()))
    for i in range(3):
        for j in range(i + 1, 3):
            assert all(a != b for a, b in zip(episodes[i], episodes[j], strict=True))


def test_scene_seed_fixes_the_layout(make_env):
    """With scene_seed the layout and start stay fixed across resets while goals still vary."""
    env = make_env(scene_seed=4).unwrapped
    starts, goals = set(), set()
    for seed in (0, 1, 2):
        _, info = env.reset(seed=seed)
        assert info["scene_seed"] == 4
        starts.add(env.state)
        goals.add(tuple(info["goal"]))
    assert len(starts) == 1
    assert len(goals) == 3


# ---------------------------------------------------------------------------------------
# Rewards, metrics and episode ends
# ---------------------------------------------------------------------------------------


def test_forward_reward_is_geodesic_progress_minus_slack(env):
    """A free forward step earns exactly the decrease in geodesic distance minus 0.01."""
    _, info = env.reset(seed=9)
    for _ in range(40):
        previous = info["distance_to_goal"]
        _, reward, _, _, info = env.step(FORWARD)
        if info["collided"]:
            break
        assert reward == pytest.approx(previous - info["distance_to_goal"] - 0.01, abs=1e-9)
    assert info["steps"] <= 40


def test_blocked_move_counts_a_collision(env):
    """Walking into a wall stops the robot, counts collisions, and leaves path length and view unchanged."""
    obs, info = env.reset(seed=1)
    for _ in range(100):
        before_obs, before_info, before_state = obs, info, env.state
        obs, _, _, _, info = env.step(FORWARD)
        if info["collided"]:
            break
    else:
        pytest.fail("walked 25 m straight without meeting a wall")
    assert info["collisions"] == before_info["collisions"] + 1
    assert env.state == before_state
    assert info["path_length"] == pytest.approx(before_info["path_length"])
    np.testing.assert_array_equal(obs["rgb"], before_obs["rgb"])


def test_stop_far_from_goal_terminates_without_success(env):
    """A stop ends the episode; away from the goal it fails with SPL 0 and only the slack reward."""
    _, info = env.reset(seed=2)
    assert info["distance_to_goal"] >= 1.0 - 0.05  # goals are sampled at least ~1 m away
    obs, reward, terminated, truncated, info = env.step(STOP)
    assert terminated and not truncated
    assert info["success"] is False
    assert info["spl"] == 0.0 and info["soft_spl"] == 0.0
    assert reward == pytest.approx(-0.01)
    with pytest.raises(RuntimeError, match="episode ended"):
        env.step(FORWARD)


def test_truncates_at_max_steps(make_env):
    """Without a stop the episode truncates after max_steps actions and refuses further steps."""
    env = make_env(max_steps=3).unwrapped
    env.reset(seed=0)
    results = [env.step(LEFT) for _ in range(3)]
    assert [r[2:4] for r in results] == [(False, False), (False, False), (False, True)]
    with pytest.raises(RuntimeError, match="call env.reset"):
        env.step(LEFT)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_oracle_policy_succeeds_with_high_spl(env, seed):
    """A geodesic greedy oracle reaches every goal with SPL > 0.5, and the metrics match their formulas."""
    _, info = env.reset(seed=seed)
    d0 = info["distance_to_goal"]
    rewards, done = [], False
    while not done:
        action = ShortestPathFollower(env.scene, env.task.success_distance).act(env.state, env.task.goal)
        _, reward, terminated, truncated, info = env.step(action)
        rewards.append(reward)
        done = terminated or truncated
    assert terminated and info["success"]
    assert info["spl"] > 0.5
    states = env.episode.states
    path = sum(math.hypot(b.x - a.x, b.z - a.z) for a, b in zip(states[:-1], states[1:], strict=True))
    assert info["path_length"] == pytest.approx(path)
    assert info["start_distance_to_goal"] == pytest.approx(d0)
    efficiency = d0 / max(d0, path)
    assert info["spl"] == pytest.approx(efficiency)
    assert info["soft_spl"] == pytest.approx((1.0 - info["distance_to_goal"] / d0) * efficiency)
    assert info["distance_to_goal"] < 0.2
    # The rewards telescope: total progress d0 - d_T, the success bonus, and the slack per step.
    assert sum(rewards) == pytest.approx(d0 - info["distance_to_goal"] + 2.5 - 0.01 * len(rewards))


# ---------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------


def test_render_rgb_array_shows_view_beside_map(make_env):
    """render() returns the camera view (scaled) beside the map, uint8, the view unchanged in it."""
    from rtfm_env import viz

    env = make_env(render_mode="rgb_array")
    obs, _ = env.reset(seed=0)
    for action in (FORWARD, FORWARD, LEFT, FORWARD):
        obs, *_ = env.step(action)
    frame = env.render()
    assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3
    assert frame.shape[0] == 256 and frame.shape[1] > 256
    np.testing.assert_array_equal(frame[:, :256], viz.resize(obs["rgb"], 256))
    # The map half carries the robot's colour (drawn at its current position).
    assert np.all(frame[:, 256:] == viz.COLORS["robot"], axis=-1).any()


def test_render_without_mode_warns(env):
    """render() with render_mode=None warns and returns None, as Gymnasium's envs do."""
    env.reset(seed=0)
    with pytest.warns(UserWarning, match="render_mode"):
        assert env.render() is None


# ---------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "action", [7, 4, -1, 1.5, "forward", np.float32(1.0), None, np.array([1]), True, False, np.True_]
)
def test_action_outside_space_raises(env, action):
    """An action outside Discrete(4) raises ValueError naming the valid actions."""
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"valid actions: 0 \(stop\), 1 \(forward\), 2 \(turn_left\)"):
        env.step(action)


def test_numpy_integer_actions_accepted(env):
    """NumPy integer actions (as policies emit them) are valid."""
    env.reset(seed=0)
    _, _, terminated, _, info = env.step(np.int64(LEFT))
    assert not terminated and info["steps"] == 1


def test_step_and_render_before_reset_raise(make_env):
    """step() and render() before the first reset() raise with a message saying to reset."""
    env = make_env(render_mode="rgb_array").unwrapped
    with pytest.raises(RuntimeError, match=r"before reset\(\)"):
        env.step(FORWARD)
    with pytest.raises(RuntimeError, match=r"before reset\(\)"):
        env.render()


@pytest.mark.parametrize("env_id", RTFM_IDS)
def test_unknown_scene_lists_valid_ids(env_id):
    """An unknown scene id raises ValueError listing the valid MiniWorld ids."""
    with pytest.raises(ValueError, match="unknown MiniWorld env id 'MiniWorld-Nowhere-v0'") as err:
        gym.make(env_id, scene="MiniWorld-Nowhere-v0")
    assert "MiniWorld-FourRooms-v0" in str(err.value) and "MiniWorld-Maze-v0" in str(err.value)


@pytest.mark.parametrize("env_id", RTFM_IDS)
def test_unknown_camera_lists_valid_cameras(env_id):
    """An unknown camera name raises ValueError listing the valid cameras."""
    with pytest.raises(ValueError, match=r"unknown camera 'pinhole'.*'ground_truth', 'model'"):
        gym.make(env_id, camera="pinhole")


@pytest.mark.parametrize("env_id", RTFM_IDS)
def test_unknown_argument_lists_valid_arguments(env_id):
    """A keyword no id knows raises TypeError naming it and listing the valid ones, task arguments included."""
    with pytest.raises(
        TypeError, match=r"unknown argument\(s\) \['goal_radius'\]; valid arguments: \[.*'camera'"
    ) as err:
        gym.make(env_id, goal_radius=1.0)
    valid = load_env_creator(gym.spec(env_id).entry_point).argument_names()
    assert all(f"'{name}'" in str(err.value) for name in valid)


@pytest.mark.parametrize("env_id", RTFM_IDS)
def test_model_options_need_the_model_camera(env_id):
    """Camera options a camera does not take are an error naming the cameras that do, not silently ignored."""
    with pytest.raises(ValueError, match=r"\['k'\] do not apply to camera='ground_truth'.*'model', 'reprojection'"):
        gym.make(env_id, camera="ground_truth", k=2)
    with pytest.raises(ValueError, match=r"\['world'\] do not apply to camera='ground_truth'"):
        gym.make(env_id, camera="ground_truth", world="scan")
    with pytest.raises(ValueError, match=r"\['context_strategy'\] do not apply to camera='reprojection'"):
        gym.make(env_id, camera="reprojection", context_strategy="last_k")
    with pytest.raises(ValueError, match=r"depth=True needs a camera.*'ground_truth', 'reprojection'.*'model'"):
        gym.make(env_id, camera="nearest", depth=True)  # the model camera has depth with the shipped (v2) model


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"resolution": 0}, "resolution"),
        ({"resolution": 64.0}, "resolution"),
        ({"fov": 180.0}, "fov"),
        ({"max_steps": 0}, "max_steps"),
        ({"scene_seed": -1}, "scene_seed"),
        ({"scene_seed": 1.5}, "scene_seed"),
        ({"render_mode": "depth"}, "render_mode"),
        ({"success_distance": 0.0}, "success_distance"),
        ({"success_distance": math.nan}, "success_distance"),
        ({"fov": True}, "fov"),
        ({"resolution": True}, "resolution"),
        ({"resolution": 10**9}, r"resolution must be an integer in \[8, 1024\]"),
        ({"render_mode": 5}, r"unknown render_mode 5; valid: \[None, 'rgb_array'\]"),
        ({"scene_seed": True}, "scene_seed"),
        ({"max_steps": True}, "max_steps"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    """Out-of-range or mistyped constructor arguments raise ValueError naming the argument."""
    with pytest.raises(ValueError, match=match):
        PointNavEnv(**kwargs)


def test_reset_rejects_unknown_options(env):
    """reset(options=...) with keys the env does not know raises instead of ignoring them."""
    with pytest.raises(ValueError, match="options"):
        env.reset(seed=0, options={"goal": (1.0, 2.0)})


def test_camera_observe_rejects_nan_pose(env):
    """The camera the env uses refuses a NaN pose with a ValueError (the env itself cannot produce one)."""
    env.reset(seed=0)
    camera = GroundTruthCamera()
    camera.reset(env.scene, env.state.pose())
    pose = env.state.pose()
    pose[0, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        camera.observe(pose[None])


def test_close_is_idempotent():
    """close() twice is allowed and the scene's MiniWorld env is released."""
    env = gym.make("RTFM/PointNav-v0")
    scene: MiniWorldScene = env.unwrapped.scene
    env.close()
    env.close()
    with pytest.raises(RuntimeError, match="closed"):
        scene.miniworld_env  # noqa: B018  (the property raises once the scene is closed)
