"""The package type-checks (mypy with the pydantic plugin, settings in pyproject.toml), so an
annotation that lies, or a call that does not fit, fails the suite rather than a user's run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_mypy_finds_no_errors() -> None:
    pytest.importorskip("mypy", reason="mypy is a dev dependency")
    done = subprocess.run([sys.executable, "-m", "mypy", "src/headrace"], cwd=ROOT, capture_output=True,
                          text=True, check=False, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "Success: no issues found" in done.stdout
