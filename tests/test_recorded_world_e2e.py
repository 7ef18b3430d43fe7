"""End to end: a world built from a held-out MiniWorld recording is a scene the oracle can navigate."""

import gymnasium as gym
import numpy as np
import pytest
from test_envs_recorded import oracle_successes

import rtfm_env  # noqa: F401 (registers the envs)
from rtfm_env.world_build import BuildConfig, build_world

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def built_world(tmp_path_factory):
    """A world file built by `rtfm-env world build --from scene YMaze --kind walk` (held-out id)."""
    out = tmp_path_factory.mktemp("e2e") / "ymaze.rtfm"
    info = build_world("scene", "MiniWorld-YMaze-v0", out, BuildConfig(seed=0, kind="walk"))
    assert info["free_space"]["method"] == "depth"
    return out


def test_shortest_path_agent_succeeds_in_a_built_world(built_world):
    """PointNav's oracle succeeds on >= 90% of 20 episodes in the world built from a recording."""
    env = gym.make("RTFM/PointNav-v0", world=str(built_world), camera="reprojection", max_steps=200)
    try:
        successes = oracle_successes(env, 20)
        assert np.mean(successes) >= 0.9, successes
        assert env.unwrapped.scene.env_id == "world:ymaze"
    finally:
        env.close()


def test_built_world_refuses_ground_truth(built_world):
    """A recorded world has no renderer: the ground-truth camera is refused with the way out."""
    with pytest.raises(ValueError, match="recording.*reprojection"):
        gym.make("RTFM/PointNav-v0", world=str(built_world), camera="ground_truth")
