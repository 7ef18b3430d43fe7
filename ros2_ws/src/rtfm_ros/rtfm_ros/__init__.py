"""ROS 2 package of the rtfm-sim camera node; the code is :mod:`rtfm_env.ros.camera_node`."""
