"""Test-wide set-up: DDS stays on loopback, in a domain of this test process's own."""
import os
from pathlib import Path

import pytest

from mbpl_ros.dds import use_loopback_only

# Set before any rclpy.init: discovery on this host only, and a domain that parallel
# test processes do not share (the Makefile passes one; a bare pytest derives one). DDS is
# bound to loopback by the package's Fast DDS profile (mbpl_ros.dds), unless one is set;
# node processes the tests start inherit both.
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("ROS_DOMAIN_ID", str(os.getpid() % 90 + 1))
use_loopback_only()


@pytest.fixture
def ros_context():
    """A fresh rclpy Context, initialised for one test and shut down after it."""
    import rclpy
    from rclpy.context import Context

    context = Context()
    rclpy.init(context=context)
    try:
        yield context
    finally:
        if context.ok():
            rclpy.shutdown(context=context)


# ---------------------------------------------------------------- outputs stay in tmp
# Tests write only to temporary directories: nothing may appear in the repository (a run
# directory in runs/, a stray file at the top or in the package folder). Caches and build
# output are not outputs.
_PACKAGE = Path(__file__).resolve().parents[1]
_REPOSITORY = _PACKAGE.parent
_NOT_OUTPUTS = {".pytest_cache", ".hypothesis", "__pycache__", ".venv", "build",
                "mbpl_ros.egg-info", ".whl"}


def _repository_outputs() -> set:
    found = set()
    for top in (_REPOSITORY, _PACKAGE):
        found |= {p for p in top.iterdir() if p.name not in _NOT_OUTPUTS}
        runs = top / "runs"
        if runs.is_dir():
            found |= set(runs.iterdir())
    return found


def pytest_sessionstart(session):
    session.config._outputs_before = _repository_outputs()


def pytest_sessionfinish(session, exitstatus):
    before = getattr(session.config, "_outputs_before", None)
    if before is None:
        return
    written = sorted(str(p.relative_to(_REPOSITORY)) for p in _repository_outputs() - before)
    if written:
        session.config.get_terminal_writer().line()
        session.config.get_terminal_writer().line(
            f"test outputs written into the repository (tests must use tmp_path): {written}",
            red=True)
        session.exitstatus = 1
