"""
ROS 2's Python linters over the package, with their default configuration.

The same checks as the test_flake8.py / test_pep257.py templates of ament_lint that
`colcon test` runs: ament_flake8 (flake8 with ament's configuration, 99 columns) and
ament_pep257 (pydocstyle with ament's convention). CONTRIBUTING.md says how to run them
on single files.
"""

from pathlib import Path

from ament_flake8.main import main_with_errors as flake8_main_with_errors
from ament_pep257.main import main as pep257_main
import pytest

ROOT = Path(__file__).resolve().parents[1]
#: What the linters check: the package, its launch files, the benchmarks and setup.py.
LINTED = ([str(ROOT / name) for name in ("mbpl_ros", "launch", "setup.py")]
          + [str(ROOT.parent / "bench")])


@pytest.mark.linter
def test_flake8():
    rc, errors = flake8_main_with_errors(argv=LINTED)
    assert rc == 0, f"Found {len(errors)} code style errors / warnings:\n" + "\n".join(errors)


@pytest.mark.linter
def test_pep257():
    rc = pep257_main(argv=LINTED)
    assert rc == 0, "Found docstring style errors (listed above, in the captured output)"
