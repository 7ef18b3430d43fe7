"""``ros2 run rtfm_ros camera_node``: runs :func:`rtfm_env.ros.camera_node.main` (one source of the node)."""

import sys

from rtfm_env.ros.camera_node import main

if __name__ == "__main__":
    sys.exit(main())
