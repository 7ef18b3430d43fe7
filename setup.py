"""rtfm-sim: a camera simulator for robotics whose camera is a learned frame model."""

from setuptools import find_packages, setup

setup(
    name="rtfm-env",
    version="0.1.0",
    description="Camera simulator for robotics whose camera is a learned posed-frame model",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["rtfm_env", "rtfm_env.*"]),
    include_package_data=True,
    # the shipped frame-model checkpoint travels with the package
    package_data={
        "rtfm_env": [
            "py.typed",
            "model/checkpoints/*/*.json",
            "model/checkpoints/*/*.safetensors",
            "model/checkpoints/*/*.md",
        ]
    },
    install_requires=[
        "numpy>=1.24",
        "scipy>=1.10",
        "torch==2.13.0",
        "gymnasium>=1.0,<2",
        "miniworld==2.1.0",
        "pyglet>=1.5,<2",
        "transforms3d>=0.4",
        "safetensors>=0.4",
        "scikit-image>=0.22",
        "tqdm>=4.60",
        "matplotlib>=3.7",
        "imageio>=2.30",
        "imageio-ffmpeg>=0.5",
        # MS-SSIM for the closed-loop benchmark: pure torch, no weights to download
        "pytorch-msssim==1.0.0",
    ],
    extras_require={
        # moviepy: gymnasium.wrappers.RecordVideo writes its videos with it
        "rl": ["stable-baselines3>=2.3", "moviepy>=2.1"],
        # ROS 2 Kilted from PyPI wheels (no ROS install needed) for the camera node (rosgraph-msgs: /clock),
        # rosbags for bags
        "ros": [
            "ros-rclpy>=9.1",
            "ros-rmw-fastrtps-cpp>=9.3",
            "ros-sensor-msgs>=5.5",
            "ros-geometry-msgs>=5.5",
            "ros-nav-msgs>=5.5",
            "ros-std-srvs>=5.5",
            "ros-rosgraph-msgs>=2.3",
            "rosbags>=0.10",
        ],
        "dev": [
            "pytest>=8",
            "pytest-timeout>=2.2",
            "hypothesis>=6.100",
            "psutil>=5.9",
            "ruff>=0.5",
        ],
    },
    entry_points={
        "console_scripts": ["rtfm-env = rtfm_env.cli:main", "rtfm-camera = rtfm_env.ros.camera_node:main"]
    },
)
