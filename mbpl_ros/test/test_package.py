"""package.xml, setup.py and the files on disk agree; the layers import downwards only."""
import configparser
import importlib
import pkgutil
import subprocess
import sys
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    """The package as an installer sees it: a wheel built from this tree, offline."""
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(out), str(ROOT)], check=True, timeout=120)
    (path,) = out.glob("mbpl_ros-*.whl")
    return zipfile.ZipFile(path)


def test_package_xml_is_format_3_with_the_runtime_dependencies():
    root = ET.parse(ROOT / "package.xml").getroot()
    assert root.get("format") == "3"
    assert root.findtext("name") == "mbpl_ros"
    exec_depends = {e.text for e in root.findall("exec_depend")}
    assert {"rclpy", "std_msgs", "sensor_msgs", "geometry_msgs", "std_srvs",
            "python3-numpy", "python3-scipy", "python3-yaml"} <= exec_depends
    assert any("torch" in d for d in exec_depends)
    assert "python3-pytest" in {e.text for e in root.findall("test_depend")}
    assert root.find("export/build_type").text == "ament_python"


def test_setup_cfg_installs_executables_where_ros2_run_finds_them():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    assert config["develop"]["script_dir"] == "$base/lib/mbpl_ros"
    assert config["install"]["install_scripts"] == "$base/lib/mbpl_ros"


def test_every_data_file_is_installed(wheel):
    names = set(wheel.namelist())
    data = "mbpl_ros-0.1.0.data/data/share/"
    expected = {data + "ament_index/resource_index/packages/mbpl_ros", data + "mbpl_ros/package.xml"}
    for pattern in ("launch/*.launch.py", "config/*.yaml", "urdf/*"):
        expected |= {data + "mbpl_ros/" + str(p.relative_to(ROOT)) for p in ROOT.glob(pattern)}
    expected |= {data + "mbpl_ros/dds/" + p.name for p in ROOT.glob("mbpl_ros/dds/*.xml")}
    assert len(expected) > 3, "nothing to install under config/ or urdf/"
    assert expected <= names, sorted(expected - names)
    # the loopback Fast DDS profile: in share/ and beside mbpl_ros.dds, which finds it
    assert data + "mbpl_ros/dds/fastdds_loopback.xml" in names
    assert "mbpl_ros/dds/fastdds_loopback.xml" in names


def test_every_console_script_imports_and_every_node_has_one(wheel):
    (entry_points_file,) = [n for n in wheel.namelist() if n.endswith("entry_points.txt")]
    parser = configparser.ConfigParser()
    parser.read_string(wheel.read(entry_points_file).decode())
    scripts = dict(parser["console_scripts"])
    for name, target in scripts.items():
        module_name, function = target.split(":")
        assert callable(getattr(importlib.import_module(module_name), function)), name
    import mbpl_ros.nodes
    node_modules = {f"mbpl_ros.nodes.{m.name}" for m in pkgutil.iter_modules(mbpl_ros.nodes.__path__)
                    if hasattr(importlib.import_module(f"mbpl_ros.nodes.{m.name}"), "main")}
    assert node_modules <= {t.split(":")[0] for t in scripts.values()}
    assert scripts["mbpl"] == "mbpl_ros.cli:main"


def test_core_and_sim_import_no_ros():
    code = ("import importlib, pkgutil, sys, mbpl_ros.core, mbpl_ros.sim\n"
            "for pkg in (mbpl_ros.core, mbpl_ros.sim):\n"
            "    for m in pkgutil.iter_modules(pkg.__path__):\n"
            "        importlib.import_module(f'{pkg.__name__}.{m.name}')\n"
            "bad = sorted(n for n in sys.modules if n.split('.')[0] in ('rclpy', 'std_msgs', 'sensor_msgs'))\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_core_does_not_import_the_simulator():
    code = ("import importlib, pkgutil, sys, mbpl_ros.core\n"
            "for m in pkgutil.iter_modules(mbpl_ros.core.__path__):\n"
            "    importlib.import_module(f'mbpl_ros.core.{m.name}')\n"
            "bad = sorted(n for n in sys.modules if n.startswith(('pybullet', 'mbpl_ros.sim', 'mbpl_ros.nodes')))\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# Third-party imports of mbpl_ros/ and launch/: (package.xml key, pip name when the README's
# ROS-machine pip line must install it, else None; requirements.txt name or None (ROS wheel)).
RUNTIME_IMPORTS = {
    "rclpy": ("rclpy", None, "ros-kilted-rclpy"),
    "rcl_interfaces": ("rcl_interfaces", None, None),
    "builtin_interfaces": ("builtin_interfaces", None, None),
    "std_msgs": ("std_msgs", None, "ros-kilted-std-msgs"),
    "sensor_msgs": ("sensor_msgs", None, "ros-kilted-sensor-msgs"),
    "geometry_msgs": ("geometry_msgs", None, "ros-kilted-geometry-msgs"),
    "visualization_msgs": ("visualization_msgs", None, "ros-kilted-visualization-msgs"),
    "mbpl_ros_interfaces": ("mbpl_ros_interfaces", None, None),   # this repository's
    "std_srvs": ("std_srvs", None, "ros-kilted-std-srvs"),
    "rosgraph_msgs": ("rosgraph_msgs", None, "ros-kilted-rosgraph-msgs"),
    "ament_index_python": ("ament_index_python", None, "ros-kilted-ament-index-python"),
    "launch": ("launch", None, None),          # launch files only; not on PyPI
    "launch_ros": ("launch_ros", None, None),
    "numpy": ("python3-numpy", None, "numpy"),
    "scipy": ("python3-scipy", None, "scipy"),
    "yaml": ("python3-yaml", None, "pyyaml"),
    "matplotlib": ("python3-matplotlib", None, "matplotlib"),
    "PIL": ("python3-pil", None, "pillow"),
    "threadpoolctl": ("python3-threadpoolctl", "threadpoolctl", "threadpoolctl"),
    "pybullet": ("python3-pybullet-pip", "pybullet", "pybullet"),
    "pybullet_data": ("python3-pybullet-pip", "pybullet", "pybullet"),
    "pybullet_utils": ("python3-pybullet-pip", "pybullet", "pybullet"),
    "torch": ("python3-torch-pip", "torch", "torch"),
    "mcap": ("python3-mcap-pip", "mcap", "mcap"),
    "mcap_ros2": ("python3-mcap-ros2-support-pip", "mcap-ros2-support", "mcap-ros2-support"),
    "gymnasium": ("python3-gymnasium-pip", "gymnasium", "gymnasium"),
    "pinocchio": ("pinocchio", None, "pin"),   # a ROS package (ros-<distro>-pinocchio)
}
#: Imported only when present, with a message saying what it adds.
OPTIONAL_IMPORTS = {"imageio_ffmpeg"}


def third_party_imports() -> dict:
    """Top-level module -> files importing it, for mbpl_ros/**.py and launch/*.py."""
    import ast

    found = {}
    for path in sorted(ROOT.glob("mbpl_ros/**/*.py")) + sorted(ROOT.glob("launch/*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "mbpl_ros":
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def requirement_names(text: str) -> set:
    import re

    return {re.split(r"[<>=!~\[ ]", line.strip(), maxsplit=1)[0].lower()
            for line in text.splitlines() if line.strip() and not line.strip().startswith("#")}


def test_package_xml_and_the_pip_lines_name_every_runtime_dependency():
    imports = third_party_imports()
    unknown = {name: sorted(files) for name, files in imports.items()
               if name not in RUNTIME_IMPORTS and name not in OPTIONAL_IMPORTS}
    assert not unknown, ("new runtime imports: add them to package.xml, requirements.txt and "
                         f"RUNTIME_IMPORTS: {unknown}")
    root = ET.parse(ROOT / "package.xml").getroot()
    exec_depends = {e.text for e in root.findall("exec_depend") + root.findall("depend")}
    readme = (ROOT.parent / "README.md").read_text()
    ros_section = readme[readme.index("## On a ROS 2 machine"):]
    pip_line = [line for line in ros_section.splitlines() if line.startswith("pip install ")][0]
    pip_names = requirement_names("\n".join(pip_line.split()[2:]))
    requirements = requirement_names((ROOT.parent / "requirements.txt").read_text())
    for name in imports:
        if name in OPTIONAL_IMPORTS:
            continue
        key, pip_name, requirement = RUNTIME_IMPORTS[name]
        assert key in exec_depends, f"package.xml lacks <exec_depend>{key}</exec_depend> ({name})"
        assert pip_name is None or pip_name in pip_names, \
            f"README's ROS-machine pip line lacks {pip_name}"
        assert requirement is None or requirement in requirements, \
            f"requirements.txt lacks {requirement}"
