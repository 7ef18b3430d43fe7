"""Cameras: what the agent sees from a pose.

A camera is reset onto a scene at a start pose and then asked for frames at batches of
camera-to-world poses. :class:`GroundTruthCamera` renders the scene itself; the model camera
(``camera="model"``) generates frames with the frame model from posed frames kept in a
:class:`~rtfm_env.memory.SpatialMemory`, and has the same interface so envs and the ROS node
never care which one they hold.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from rtfm_env.geometry import Intrinsics, check_pose
from rtfm_env.scenes.base import Scene

__all__ = ["Camera", "GroundTruthCamera", "CAMERAS", "make_camera"]


class Camera(ABC):
    """Produces uint8 (H, W, 3) RGB frames for camera-to-world poses."""

    intrinsics: Intrinsics

    @abstractmethod
    def reset(self, scene: Scene, pose: np.ndarray) -> np.ndarray:
        """Start a new episode in ``scene`` with the camera at ``pose``; returns the first frame."""

    @abstractmethod
    def observe(self, poses: np.ndarray) -> np.ndarray:
        """Frames (B, H, W, 3) uint8 seen from camera-to-world poses (B, 4, 4)."""

    def close(self) -> None:  # noqa: B027 (optional hook: most cameras hold nothing to release)
        """Release resources."""


def _check_poses(poses: np.ndarray) -> np.ndarray:
    poses = np.asarray(poses, dtype=np.float64)
    if poses.ndim == 2:
        poses = poses[None]
    if poses.ndim != 3 or poses.shape[1:] != (4, 4):
        raise ValueError(f"poses must have shape (B, 4, 4), got {poses.shape}")
    for i, p in enumerate(poses):
        check_pose(p, name=f"poses[{i}]")
    return poses


class GroundTruthCamera(Camera):
    """The scene's own renderer: the ceiling any learned camera is measured against."""

    def __init__(self) -> None:
        self.scene: Scene | None = None

    def reset(self, scene: Scene, pose: np.ndarray) -> np.ndarray:
        """Attach to ``scene`` and return the ground-truth frame at ``pose``."""
        self.scene = scene
        self.intrinsics = scene.intrinsics
        return self.observe(pose)[0]

    def observe(self, poses: np.ndarray) -> np.ndarray:
        """Render the scene at each pose; raises if the scene has no renderer."""
        if self.scene is None:
            raise RuntimeError("GroundTruthCamera.observe called before reset(scene, pose)")
        poses = _check_poses(poses)
        frames = [self.scene.render(p) for p in poses]
        if any(f is None for f in frames):
            raise RuntimeError(f"scene {self.scene.env_id!r} has no ground-truth renderer")
        return np.stack(frames)


#: Camera names accepted by envs and the ROS node. The model camera registers itself here
#: when the frame model is available.
CAMERAS: dict[str, type[Camera]] = {"ground_truth": GroundTruthCamera}


def make_camera(name: str, **kwargs) -> Camera:
    """Instantiate a camera by name; unknown names fail with the valid choices."""
    if name not in CAMERAS:
        raise ValueError(f"unknown camera {name!r}; valid cameras: {sorted(CAMERAS)}")
    return CAMERAS[name](**kwargs)
