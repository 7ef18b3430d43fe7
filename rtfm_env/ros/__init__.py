"""ROS 2 side of rtfm-sim: the camera node (needs the ``ros`` extra: rclpy and message wheels).

The node's code lives here, inside the installable package, so that the ``rtfm-camera`` console
script of the virtualenv and ``ros2 run rtfm_ros camera_node`` of a colcon workspace (whose
``rtfm_ros.camera_node`` only forwards to :func:`rtfm_env.ros.camera_node.main`) run the same
source. :mod:`rtfm_env.ros.bag` records what the node publishes as a rosbag2 bag (and is the
``rtfm-env record-bag`` subcommand). Importing this package does not import rclpy;
:mod:`rtfm_env.ros.camera_node` does, and :mod:`rtfm_env.ros.bag` only when it records.
"""
