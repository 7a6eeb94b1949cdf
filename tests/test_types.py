"""The package type-checks: mypy, strict, with the settings in pyproject.toml's [tool.mypy]."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gateway_type_checks(tmp_path_factory):
    # A fresh cache under this session's temp root: the check takes some seconds more, and a
    # cache left by an earlier run cannot hide an error.
    cache = tmp_path_factory.mktemp("mypy-cache")
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(cache), "--no-error-summary"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"mypy found errors:\n{done.stdout}{done.stderr}"
