"""ament_python package of the rtfm-sim camera node (``ros2 run rtfm_ros camera_node``).

The node's code is ``rtfm_env.ros.camera_node`` in the project's installable package; this
package gives it a ROS 2 package name, an executable under ``lib/rtfm_ros`` and the launch
files of the repository's top-level ``launch/`` folder under ``share/rtfm_ros/launch``.
"""

import os
from glob import glob

from setuptools import setup

PACKAGE = "rtfm_ros"
HERE = os.path.dirname(os.path.abspath(__file__))
# The launch files live once, at the repository root; setuptools wants paths relative to here.
LAUNCH_DIR = os.path.join(HERE, "..", "..", "..", "launch")
LAUNCH = sorted(
    os.path.relpath(p, HERE) for pattern in ("*.launch.py", "*.yaml") for p in glob(os.path.join(LAUNCH_DIR, pattern))
)

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=[PACKAGE],
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", LAUNCH),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="rtfm-sim maintainers",
    maintainer_email="rtfm-sim@users.noreply.github.com",
    description="rtfm-sim camera node: a learned frame model as a simulated camera driven by cmd_vel",
    license="MIT",
    entry_points={"console_scripts": ["camera_node = rtfm_ros.camera_node:main"]},
)
