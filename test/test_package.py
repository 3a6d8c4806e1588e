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
