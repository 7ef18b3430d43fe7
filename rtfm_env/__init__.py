"""rtfm-sim: a camera simulator for robotics whose camera is a learned frame model.

Importing the package registers its Gymnasium envs (:data:`ENV_IDS`). Each id has an
``entry_point`` (the single env) and a ``vector_entry_point`` (the native batched vector env
that ``gymnasium.make_vec(id, num_envs=N)`` returns). Registration names entry points as
strings, so this import stays light: MiniWorld, OpenGL and torch load only when an env is made.
"""

from gymnasium.envs.registration import register, registry

__version__ = "0.1.0"

#: env id -> (single-env entry point, vector-env entry point)
ENV_IDS: dict[str, tuple[str, str]] = {
    "RTFM/PointNav-v0": ("rtfm_env.envs.pointnav:PointNavEnv", "rtfm_env.envs.vector:PointNavVectorEnv"),
    "RTFM/ImageNav-v0": ("rtfm_env.envs.imagenav:ImageNavEnv", "rtfm_env.envs.vector:ImageNavVectorEnv"),
    "RTFM/Explore-v0": ("rtfm_env.envs.explore:ExploreEnv", "rtfm_env.envs.vector:ExploreVectorEnv"),
    "RTFM/Revisit-v0": ("rtfm_env.envs.revisit:RevisitEnv", "rtfm_env.envs.vector:RevisitVectorEnv"),
    "RTFM/ObjectNav-v0": ("rtfm_env.envs.objectnav:ObjectNavEnv", "rtfm_env.envs.objectnav:ObjectNavVectorEnv"),
}

for _id, (_entry, _vector_entry) in ENV_IDS.items():
    if _id not in registry:
        # Truncation at max_steps is the env's own (a gym.make kwarg), so no TimeLimit wrapper.
        register(id=_id, entry_point=_entry, vector_entry_point=_vector_entry)
