"""Tests of the ROS 2 launch file, its YAML parameter example and the ament_python package.

Without a ROS install ``launch`` is not importable, so the launch file is checked by its syntax
and the arguments it declares against the node's parameters; with one, it is also loaded.
"""

from __future__ import annotations

import ast
import runpy
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytest.importorskip("rclpy", reason="needs the ros extra: pip install -e '.[ros]'")
yaml = pytest.importorskip("yaml")

from rtfm_env.ros import camera_node  # noqa: E402
from rtfm_env.ros.camera_node import PARAMETERS  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
LAUNCH_FILE = ROOT / "launch" / "rtfm_camera.launch.py"
PARAMS_FILE = ROOT / "launch" / "rtfm_camera.yaml"
PACKAGE = ROOT / "ros2_ws" / "src" / "rtfm_ros"
TYPES = {"str": str, "int": int, "float": float, "bool": bool}
#: how launch_ros reads an argument's string for each value_type
PARSE = {"str": str, "int": int, "float": float, "bool": lambda s: {"true": True, "false": False}[s.lower()]}


def _launch_arguments() -> list[tuple[str, str, str, str]]:
    """(name, default, type name, description) of the ARGUMENTS table in the launch file."""
    tree = ast.parse(LAUNCH_FILE.read_text(), filename=str(LAUNCH_FILE))
    table = next(
        node.value
        for node in tree.body
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "ARGUMENTS" for t in node.targets)
    )
    rows = []
    for row in table.elts:
        name, default, typ, desc = row.elts
        rows.append((name.value, default.value, typ.id, desc.value))
    return rows


def test_launch_file_compiles_and_declares_the_entry_point():
    """The launch file is valid Python that defines generate_launch_description."""
    tree = ast.parse(LAUNCH_FILE.read_text(), filename=str(LAUNCH_FILE))
    names = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert "generate_launch_description" in names


@pytest.mark.parametrize("row", _launch_arguments(), ids=lambda r: r[0])
def test_launch_argument_is_a_node_parameter_with_its_default(row):
    """Each launch argument names a node parameter, with the same type and default value."""
    name, default, typ, _ = row
    assert name in PARAMETERS, f"launch argument {name!r} is not a node parameter; valid: {sorted(PARAMETERS)}"
    expected = PARAMETERS[name].default
    assert TYPES[typ] is type(expected), f"{name}: launch casts to {typ}, node declares {type(expected).__name__}"
    assert PARSE[typ](default) == expected


def test_launch_arguments_cover_the_main_parameters():
    """The issue's main parameters are all launch arguments."""
    main = {"scene", "seed", "camera", "world", "checkpoint", "rate_hz", "width", "height", "fov", "k"}
    main |= {"sampling_steps", "publish_depth"}
    assert main <= {r[0] for r in _launch_arguments()}


def test_params_yaml_lists_every_parameter_with_its_default():
    """The YAML example holds exactly the node's parameters, each at its declared default and type."""
    doc = yaml.safe_load(PARAMS_FILE.read_text())
    params = doc["rtfm_camera"]["ros__parameters"]
    assert set(params) == set(PARAMETERS)
    for name, value in params.items():
        default = PARAMETERS[name].default
        assert type(value) is type(default) and value == default, f"{name}: {value!r} vs {default!r}"


def test_every_parameter_has_a_description():
    """Each declared parameter says what it is."""
    for name, p in PARAMETERS.items():
        assert len(p.description) > 10, name


def test_launch_description_loads_where_launch_is_installed():
    """With a ROS install, the launch description builds and declares the table's arguments."""
    pytest.importorskip("launch_ros", reason="launch_ros comes with a ROS 2 install, not the PyPI wheels")
    from launch.actions import DeclareLaunchArgument

    ld = runpy.run_path(str(LAUNCH_FILE))["generate_launch_description"]()
    declared = {a.name for a in ld.entities if isinstance(a, DeclareLaunchArgument)}
    assert {r[0] for r in _launch_arguments()} <= declared


def test_package_xml_is_ament_python_rtfm_ros():
    """package.xml is format 3, named rtfm_ros, built by ament_python, and depends on the message packages."""
    root = ET.parse(PACKAGE / "package.xml").getroot()
    assert root.get("format") == "3" and root.findtext("name") == "rtfm_ros"
    assert root.find("export/build_type").text == "ament_python"
    deps = {e.text for e in root.findall("exec_depend")}
    assert {"rclpy", "sensor_msgs", "geometry_msgs", "nav_msgs", "std_srvs", "rosgraph_msgs", "tf2_ros"} <= deps
    assert (PACKAGE / "resource" / "rtfm_ros").is_file()


def test_package_setup_installs_launch_files_and_the_node(monkeypatch):
    """The ament setup.py installs the launch file and YAML and its camera_node runs the project's node."""
    captured = {}
    import setuptools

    monkeypatch.setattr(setuptools, "setup", lambda **kw: captured.update(kw))
    runpy.run_path(str(PACKAGE / "setup.py"))
    data = dict(captured["data_files"])
    installed = {(PACKAGE / p).resolve() for p in data["share/rtfm_ros/launch"]}
    assert {LAUNCH_FILE.resolve(), PARAMS_FILE.resolve()} <= installed
    assert captured["entry_points"]["console_scripts"] == ["camera_node = rtfm_ros.camera_node:main"]
    wrapper = runpy.run_path(str(PACKAGE / "rtfm_ros" / "camera_node.py"))
    assert wrapper["main"] is camera_node.main
