"""Launch the rtfm-sim camera node: ``ros2 launch rtfm_ros rtfm_camera.launch.py scene:=Maze rate_hz:=30.0``.

Parameters come from ``params_file`` (default: the installed ``rtfm_camera.yaml``) and then
from the launch arguments below, which override the file. Every argument is a parameter of
``rtfm_env.ros.camera_node`` (the package's tests check this).
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

from launch import LaunchDescription

# (name, default, type, description): the node's main parameters, overridable from the command line.
ARGUMENTS = [
    ("scene", "MiniWorld-OneRoom-v0", str, "MiniWorld env id or short name, or a saved world file (memory cameras)"),
    ("seed", "0", int, "layout seed of the scene"),
    ("camera", "ground_truth", str, "what renders frames: ground_truth, model, reprojection or nearest"),
    ("world", "", str, "memory cameras' world at start and reset: image, walk, scan or a world file; empty: default"),
    ("checkpoint", "", str, "frame-model checkpoint directory (camera:=model)"),
    ("k", "0", int, "context frames per frame (camera:=model or reprojection); 0: the camera's default"),
    ("sampling_steps", "0", int, "Euler sampling steps; 0 uses the checkpoint's default"),
    ("torch_threads", "1", int, "CPU threads of torch (camera:=model or reprojection); 0: one per core"),
    ("compile_model", "false", bool, "torch.compile the frame model (camera:=model; needs g++)"),
    ("rate_hz", "10.0", float, "frames per second"),
    ("width", "64", int, "image width, pixels"),
    ("height", "64", int, "image height, pixels"),
    ("fov", "60.0", float, "vertical field of view, degrees"),
    ("world_path", "", str, "file that the save_world and load_world services write and read (memory cameras)"),
    ("publish_depth", "true", bool, "publish camera/depth/image_raw (32FC1, REP-118) and depth/camera_info"),
    ("publish_tf", "true", bool, "publish /tf and /tf_static (odom -> base_link -> optical frame)"),
    ("publish_clock", "false", bool, "publish /clock with simulated time; other nodes then use_sim_time:=true"),
    ("record_bag", "", str, "directory of a new rosbag2 bag recording all the node publishes; empty: none"),
    ("bag_storage", "mcap", str, "storage of record_bag: mcap or sqlite3"),
]


def generate_launch_description() -> LaunchDescription:
    """The camera node with its parameter file and argument overrides."""
    default_params = os.path.join(get_package_share_directory("rtfm_ros"), "launch", "rtfm_camera.yaml")
    actions = [
        DeclareLaunchArgument("params_file", default_value=default_params, description="YAML parameter file"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node and its topics"),
    ]
    actions += [DeclareLaunchArgument(n, default_value=d, description=desc) for n, d, _, desc in ARGUMENTS]
    overrides = {n: ParameterValue(LaunchConfiguration(n), value_type=t) for n, _, t, _ in ARGUMENTS}
    actions.append(
        Node(
            package="rtfm_ros",
            executable="camera_node",
            name="rtfm_camera",
            namespace=LaunchConfiguration("namespace"),
            parameters=[LaunchConfiguration("params_file"), overrides],
            output="screen",
        )
    )
    return LaunchDescription(actions)
