"""Writing what the camera node publishes to a rosbag2 bag (MCAP or sqlite3).

:class:`BagRecorder` writes ROS messages to a rosbag2 bag with the pure-Python ``rosbags``
library, so no ROS install is needed; ``ros2 bag info``, ``ros2 bag play`` and Foxglove read the
result. The bag is written under a hidden temporary directory beside its final path and moved
into place only when it is closed, so an interrupted recording never leaves a half-written bag
under the requested name and never touches an existing one.

A recording killed outright (SIGKILL, power loss) leaves its staging directory
(``.<name>.partial-XXXXXXXX``) behind. Each recorder holds an exclusive ``flock`` on a lock file
inside its own staging directory for as long as it records, and the next recorder into the same
parent removes every staging directory whose lock nobody holds (:func:`remove_stale_staging`):
the kernel drops a lock when its process dies, so a running recording's staging is never taken
for stale, whatever its age or its process id. A staging directory without a lock file (one
from before this scheme, or killed between its creation and its lock) is removed once it is
:data:`STALE_AGE_S` old.

The camera node (:mod:`rtfm_env.ros.camera_node`) records through it when its ``record_bag``
parameter names a directory; :mod:`rtfm_env.ros.record_bag` is the ``rtfm-env record-bag``
command that runs such a node. This module imports no other module of :mod:`rtfm_env.ros`, and
``rosbags`` and ``rclpy`` only when a bag is written, so ``rtfm-env --help`` works without the
``ros`` extra.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["BagRecorder", "BagError", "STORAGE", "message_type_name", "remove_stale_staging"]

#: storage plugin name -> rosbags StoragePlugin member name
STORAGE: dict[str, str] = {"mcap": "MCAP", "sqlite3": "SQLITE3"}
BAG_VERSION = 9  # rosbag2 metadata version written (read by Humble and later)
LOCK_NAME = ".lock"  # inside a staging directory: flock-ed by the recorder that owns it
STALE_AGE_S = 3600.0  # age after which a staging directory without a lock file is removed
#: A staging directory's name: ``.<bag name>.partial-`` and tempfile.mkdtemp's 8 random characters.
STAGING_PATTERN = re.compile(r"\..+\.partial-[a-z0-9_]{8}")


def _lock_free(lock: Path) -> bool:
    """Whether nobody holds the flock on ``lock`` (an existing file): its recorder has died."""
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # held: a recorder is writing there
        return False
    finally:
        os.close(fd)  # releases the lock if this call took it
    return True


def remove_stale_staging(parent: str | os.PathLike, max_age_s: float = STALE_AGE_S) -> list[Path]:
    """Remove the staging directories in ``parent`` that killed recordings left behind.

    A directory named like a staging directory (:data:`STAGING_PATTERN`) is stale when its lock
    file exists and nobody holds its flock, or when it has no lock file and was last modified
    more than ``max_age_s`` seconds ago. Symlinks and files are never touched. Removal errors
    are ignored (another recorder may be removing the same directory).

    Returns:
        the directories removed.
    """
    removed = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        if not STAGING_PATTERN.fullmatch(entry.name) or not entry.is_dir(follow_symlinks=False):
            continue
        path, lock = Path(entry.path), Path(entry.path) / LOCK_NAME
        if os.path.lexists(lock):
            stale = _lock_free(lock)
        else:
            try:
                stale = now - entry.stat(follow_symlinks=False).st_mtime > max_age_s
            except OSError:
                continue
        if stale:
            shutil.rmtree(path, ignore_errors=True)
            if not os.path.lexists(path):
                removed.append(path)
    return removed


class BagError(RuntimeError):
    """A bag cannot be created or finished (the path exists, the directory is not writable, ...)."""


def message_type_name(msg: Any) -> str:
    """The ROS 2 type name (``sensor_msgs/msg/Image``) of an rclpy message instance."""
    cls = type(msg)
    package, kind = cls.__module__.split(".")[:2]  # e.g. sensor_msgs.msg._image
    return f"{package}/{kind}/{cls.__name__}"


class BagRecorder:
    """Writes rclpy messages to a new rosbag2 bag; the bag appears at ``path`` on :meth:`close`.

    Args:
        path: directory of the bag to create; it must not exist.
        storage: a key of :data:`STORAGE` (``mcap`` or ``sqlite3``).

    Raises:
        BagError: ``path`` exists, its parent is not a writable directory, or ``storage`` is unknown.
    """

    def __init__(self, path: str | os.PathLike, storage: str = "mcap") -> None:
        from rosbags.rosbag2 import StoragePlugin, Writer
        from rosbags.typesys import Stores, get_typestore

        if storage not in STORAGE:
            raise BagError(f"unknown bag storage {storage!r}; valid: {sorted(STORAGE)}")
        self.path = Path(path)
        if self.path.exists():
            raise BagError(f"bag path {self.path} exists already; choose a new directory (bags are never overwritten)")
        parent = self.path.parent
        if not parent.is_dir():
            raise BagError(f"cannot record a bag at {self.path}: {parent} is not a directory")
        #: staging directories of killed recordings that this one removed from ``parent``
        self.removed_stale = remove_stale_staging(parent)
        self._lock_fd: int | None = None
        try:
            self._staging = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.partial-", dir=parent))
        except OSError as e:
            raise BagError(f"cannot record a bag at {self.path}: {e}") from e
        try:
            # Held until close: tells remove_stale_staging of other recorders that this one lives.
            self._lock_fd = os.open(self._staging / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            self._unlock()
            shutil.rmtree(self._staging, ignore_errors=True)
            raise BagError(f"cannot record a bag at {self.path}: {e}") from e
        # The Kilted wheels publish these types; the store gives rosbags their definitions.
        self._typestore = get_typestore(Stores.ROS2_KILTED)
        self._writer = Writer(
            self._staging / self.path.name, version=BAG_VERSION, storage_plugin=StoragePlugin[STORAGE[storage]]
        )
        self._writer.open()
        self._connections: dict[str, Any] = {}
        self.counts: dict[str, int] = {}
        self.closed = False

    def write(self, topic: str, msg: Any, log_time_ns: int) -> None:
        """Append one message on ``topic`` (its type is taken from ``msg``) at ``log_time_ns``."""
        from rclpy.serialization import serialize_message
        from rosbags.rosbag2 import WriterError

        if self.closed:
            raise BagError(f"bag {self.path} is closed")
        conn = self._connections.get(topic)
        if conn is None:
            conn = self._writer.add_connection(topic, message_type_name(msg), typestore=self._typestore)
            self._connections[topic] = conn
            self.counts[topic] = 0
        try:
            self._writer.write(conn, int(log_time_ns), serialize_message(msg))
        except (OSError, WriterError) as e:
            raise BagError(f"cannot write {topic} to the bag {self.path}: {e}") from e
        self.counts[topic] += 1

    def close(self) -> Path:
        """Finish the bag (metadata.yaml) and move it to ``path``; returns ``path``.

        Raises:
            BagError: ``path`` appeared while recording; the finished bag is left in the
                staging directory named in the message.
        """
        if self.closed:
            return self.path
        self.closed = True
        self._writer.close()
        try:
            os.rename(self._staging / self.path.name, self.path)  # fails rather than replace a directory made meanwhile
        except OSError as e:
            # Kept under a name that remove_stale_staging does not match: the finished bag is the user's.
            kept = self._staging.with_name(self._staging.name + ".kept")
            try:
                (self._staging / LOCK_NAME).unlink()
                os.rename(self._staging, kept)
            except OSError:
                kept = self._staging
            self._unlock()
            raise BagError(f"cannot move the finished bag to {self.path} ({e}); it is at {kept}") from e
        shutil.rmtree(self._staging, ignore_errors=True)
        self._unlock()
        return self.path

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def abort(self) -> None:
        """Stop recording and delete the unfinished bag."""
        if not self.closed:
            self.closed = True
            try:
                self._writer.close()
            finally:
                shutil.rmtree(self._staging, ignore_errors=True)
                self._unlock()
