"""Scenes: the physics of a world and, where it has one, its ground-truth renderer.

:class:`MiniWorldScene` wraps a MiniWorld env (walls, ground truth); :class:`RecordedScene` is a
world built from a recording (``rtfm-env world build``): its free-space grid, no renderer.

Importing this package sets ``pyglet.options["headless"] = True`` before MiniWorld (and
``pyglet.gl``) is first imported, so MiniWorld renders through EGL without a display on any
machine. Set the environment variable ``RTFM_HEADLESS=0`` beforehand to keep pyglet's default
(an X display), e.g. to watch MiniWorld's own window.
"""

from __future__ import annotations

import os

if os.environ.get("RTFM_HEADLESS", "1") != "0":
    import pyglet

    # pyglet reads this option once, when pyglet.gl is first imported; later changes are ignored.
    pyglet.options["headless"] = True

from rtfm_env.scenes.base import Scene, TopDownMap  # noqa: E402
from rtfm_env.scenes.miniworld import MiniWorldScene, miniworld_env_ids, resolve_env_id  # noqa: E402
from rtfm_env.scenes.recorded import NoFreeSpaceError, RecordedScene, WorldFileError  # noqa: E402

__all__ = [
    "Scene",
    "TopDownMap",
    "MiniWorldScene",
    "RecordedScene",
    "WorldFileError",
    "NoFreeSpaceError",
    "TRAIN_IDS",
    "HELDOUT_IDS",
    "miniworld_env_ids",
    "resolve_env_id",
]

#: MiniWorld env ids the frame model may be trained on (DESIGN.md, "Data").
TRAIN_IDS: tuple[str, ...] = tuple(
    f"MiniWorld-{name}-v0"
    for name in (
        "Maze",
        "MazeS3",
        "ThreeRooms",
        "FourRooms",
        "Hallway",
        "OneRoom",
        "PutNext",
        "PickupObjects",
        "CollectHealth",
        "TMaze",
        "RoomObjects",
    )
)

#: Public held-out MiniWorld env ids, for benchmarks only; never train on them.
HELDOUT_IDS: tuple[str, ...] = tuple(f"MiniWorld-{name}-v0" for name in ("YMaze", "WallGap", "Sign"))
