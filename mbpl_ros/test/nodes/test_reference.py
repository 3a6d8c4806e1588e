"""README's node parameter table is the one the nodes declare."""
from pathlib import Path

import pytest

from mbpl_ros.nodes.reference import parameter_reference

ROOT = Path(__file__).resolve().parents[2]
BEGIN, END = "<!-- BEGIN node parameters -->", "<!-- END node parameters -->"


@pytest.mark.timeout(120)
def test_readme_parameter_table_is_current():
    readme = (ROOT.parent / "README.md").read_text()
    table = readme[readme.index(BEGIN) + len(BEGIN):readme.index(END)].strip()
    assert table == parameter_reference(ROOT / "config" / "sim_reacher_2link.yaml"), \
        "regenerate with: mbpl params-reference (between the markers in README.md)"
