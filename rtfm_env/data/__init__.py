"""Training data: trajectories that revisit places, the shard format, the recorder, the dataset.

* :mod:`rtfm_env.data.trajectories`: seeded generators of discrete moves through a scene.
* :mod:`rtfm_env.data.shards`: write, read and check shards (RGB-D posed frames) and the manifest.
* :mod:`rtfm_env.data.recorder`: ``rtfm-env record``, resumable recording of MiniWorld episodes.
* :mod:`rtfm_env.data.dataset`: :class:`PosedFrameDataset`, (context, target) samples with depth.
* :mod:`rtfm_env.data.world_dataset`: :class:`WorldFrameDataset`, the same samples from a world
  file, with a held-out block of the recording (fine-tuning on a user's place).

The format is documented in ``docs/DATASET.md``. Importing this package does not load
MiniWorld; the recorder does when it records.
"""

from rtfm_env.data.dataset import PosedFrameDataset
from rtfm_env.data.shards import FORMAT_VERSION, NoDepthError, ShardFormatError, manifest_hash, read_manifest
from rtfm_env.data.trajectories import TRAJECTORY_KINDS, Trajectory, TrajectoryStep, make_trajectory, rollout
from rtfm_env.data.world_dataset import WorldDataError, WorldFrameDataset

__all__ = [
    "PosedFrameDataset",
    "WorldFrameDataset",
    "WorldDataError",
    "FORMAT_VERSION",
    "NoDepthError",
    "ShardFormatError",
    "manifest_hash",
    "read_manifest",
    "TRAJECTORY_KINDS",
    "Trajectory",
    "TrajectoryStep",
    "make_trajectory",
    "rollout",
]
