"""ruff and mypy (strict on the packages) are part of the test suite, not an afterthought."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.parametrize(
    "command",
    [
        pytest.param([sys.executable, "-m", "ruff", "check", "."], id="ruff"),
        # Strict mypy over the packages takes minutes on a loaded machine.
        pytest.param([sys.executable, "-m", "mypy"], id="mypy", marks=pytest.mark.slow),
    ],
)
def test_lint(command: list[str]) -> None:
    if (
        shutil.which(command[2]) is None
        and subprocess.run([*command[:3], "--version"], capture_output=True).returncode
    ):
        pytest.skip(f"{command[2]} is not installed")
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
