"""The package type-checks: mypy, strict, with the settings in pyproject.toml's [tool.mypy]."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gateway_type_checks(tmp_path_factory):
    # One cache per session's temp root: a fresh run takes ~10 s, so the cache is not reused
    # across runs on purpose (a stale cache cannot hide an error).
    cache = tmp_path_factory.mktemp("mypy-cache")
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(cache), "--no-error-summary"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"mypy found errors:\n{done.stdout}{done.stderr}"
