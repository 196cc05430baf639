"""Issue 14 item 4: the README's pytest example for `app.testing()` runs as printed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def test_the_readme_pytest_example_runs(tmp_path: Path) -> None:
    """The README's "Testing your tasks" example, written to a file and run by pytest."""
    readme = (ROOT / "README.md").read_text("utf-8")
    section = readme.split("### Testing your tasks", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "test_readme_example.py").write_text(code, "utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", tmp_path],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "passed" in done.stdout
