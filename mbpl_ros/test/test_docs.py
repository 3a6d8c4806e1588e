"""The guides' commands run: docs/real-robot.md's marked bash blocks and README.md's
`mbpl train` lines, each with --iterations 1 in a scratch directory, and the guide's
launch arguments and controllers.yaml agree with the launch file and the Panda config."""
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]   # the package folder
REPO = ROOT.parent                           # the repository: README, docs/, .venv/
GUIDE = REPO / "docs" / "real-robot.md"
README = REPO / "README.md"
RUN_MARK = "<!-- test_docs: run -->"


def code_blocks(text: str, language: str) -> list[tuple[int, str]]:
    """(start offset, body) of every ```language block."""
    return [(m.start(), m.group(1)) for m in re.finditer(rf"```{language}\n(.*?)```", text, re.S)]


def commands(block: str) -> list[str]:
    """Shell commands of a block: continuation lines joined, comments and blanks dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


def guide_commands() -> list[str]:
    text = GUIDE.read_text()
    marked = [body for start, body in code_blocks(text, "bash") if text[:start].rstrip().endswith(RUN_MARK)]
    return [command for body in marked for command in commands(body)]


def readme_commands() -> list[str]:
    """README's `mbpl train` lines, optional [--flag VALUE] parts left out."""
    found = []
    for _, body in code_blocks(README.read_text(), "bash"):
        for command in commands(body):
            if re.match(r"(\.venv/bin/)?mbpl train ", command):
                found.append(re.sub(r"\s*\[[^\]]*\]", "", command))
    return found


def one_iteration(command: str) -> str:
    return command if "--iterations" in command else f"{command} --iterations 1"


@pytest.fixture
def scratch(tmp_path):
    """A directory that looks like the repository root to a command (mbpl_ros/config/,
    mbpl_ros/urdf/, .venv/ linked), with the venv's console scripts first on PATH."""
    (tmp_path / "mbpl_ros").mkdir()
    for name in ("config", "urdf"):
        (tmp_path / "mbpl_ros" / name).symlink_to(ROOT / name)
    (tmp_path / ".venv").symlink_to(REPO / ".venv")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    return tmp_path, env


def test_the_guide_and_readme_have_commands_to_check():
    assert len(guide_commands()) >= 2 and all(c.startswith("mbpl train") for c in guide_commands())
    assert len(readme_commands()) >= 2


@pytest.mark.parametrize("command", guide_commands() + readme_commands())
def test_documented_command_runs(scratch, command):
    directory, env = scratch
    result = subprocess.run(["bash", "-c", one_iteration(command)], cwd=directory, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
    output = shlex.split(command)[shlex.split(command).index("--output") + 1]
    rows = (directory / output / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 2  # iteration 0 (the initial controllers) and 1


def test_guide_launch_arguments_are_the_launch_files():
    declared = re.findall(r'DeclareLaunchArgument\(\s*"(\w+)"', (ROOT / "launch" / "robot_gps.launch.py").read_text())
    text = GUIDE.read_text()
    table = text[text.index("| argument | default | meaning |"):]
    documented = re.findall(r"^\| `(\w+)` \|", table, re.M)
    assert documented[:len(declared)] == declared


def test_guide_controllers_yaml_drives_the_panda_joints_by_effort():
    (_, snippet), = [block for block in code_blocks(GUIDE.read_text(), "yaml")]
    controllers = yaml.safe_load(snippet)
    effort = controllers["effort_controller"]["ros__parameters"]
    assert effort["interface_name"] == "effort"
    panda = yaml.safe_load((ROOT / "config" / "panda_reach.yaml").read_text())["robot"]
    assert effort["joints"] == panda["joints"]
    assert controllers["controller_manager"]["ros__parameters"]["effort_controller"]["type"] == \
        "forward_command_controller/ForwardCommandController"


# Paths of a development machine and the contributors' tools: never in user docs.
DEVELOPMENT_ONLY = [r"/work/", r"/home/[a-z_][\w-]*/", r"/root/", r"ros-launch-overlay",
                    r"shared/tools", r"launch_pytest\.plugin"]


def user_docs() -> list[Path]:
    return [README] + sorted((REPO / "docs").glob("*.md"))


@pytest.mark.parametrize("path", user_docs(), ids=lambda p: p.name)
def test_user_docs_name_no_development_path_or_contributor_tool(path):
    text = path.read_text()
    found = [(pattern, text[max(0, m.start() - 40):m.end() + 40])
             for pattern in DEVELOPMENT_ONLY for m in re.finditer(pattern, text)]
    assert not found, f"{path.name} names what only a contributor's machine has: {found}"


def test_launch_guide_says_how_to_run_and_verify_on_a_ros_machine():
    text = (REPO / "docs" / "launch.md").read_text()
    blocks = "\n".join(body for _, body in code_blocks(text, "bash"))
    for launch_file in ("sim_gps.launch.py", "robot_gps.launch.py"):
        assert f"ros2 launch mbpl_ros {launch_file}" in blocks
    assert "python3 -m pytest test/launch" in blocks and "colcon test" in blocks
    contributing = (REPO / "CONTRIBUTING.md").read_text()
    assert "ros-launch-overlay" in contributing
    assert "-p launch_pytest.plugin mbpl_ros/test/launch" in contributing
