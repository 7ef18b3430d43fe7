"""rtfm-sim: a camera simulator for robotics whose camera is a learned frame model.

Importing the package registers its Gymnasium envs (``RTFM/PointNav-v0``). Registration names
entry points as strings, so this import stays light: MiniWorld, OpenGL and torch load only when
an env is made.
"""

from gymnasium.envs.registration import register, registry

__version__ = "0.1.0"

if "RTFM/PointNav-v0" not in registry:
    # Truncation at max_steps is the env's own (a gym.make kwarg), so no TimeLimit wrapper.
    register(id="RTFM/PointNav-v0", entry_point="rtfm_env.envs.pointnav:PointNavEnv")
