"""ROS 2 side of rtfm-sim: the camera node (needs the ``ros`` extra: rclpy and message wheels).

The node's code lives here, inside the installable package, so that the ``rtfm-camera`` console
script of the virtualenv and ``ros2 run rtfm_ros camera_node`` of a colcon workspace (whose
``rtfm_ros.camera_node`` only forwards to :func:`rtfm_env.ros.camera_node.main`) run the same
source. Modules, whose imports go one way (``record_bag`` -> ``camera_node`` -> ``bag``):

- :mod:`rtfm_env.ros.camera_node`: the node (images, depth, camera info, odometry, pose);
- :mod:`rtfm_env.ros.bag`: :class:`~rtfm_env.ros.bag.BagRecorder`, which writes what the node
  publishes to a rosbag2 bag;
- :mod:`rtfm_env.ros.record_bag`: the ``rtfm-env record-bag`` subcommand, which runs the node
  in-process while it records.

Importing this package does not import rclpy; :mod:`rtfm_env.ros.camera_node` does, and
:mod:`rtfm_env.ros.bag` and :mod:`rtfm_env.ros.record_bag` only when they record.
"""
