"""The benchmark harness runs end to end at tiny scale (`python -m bench.run --smoke`).

Nothing here judges timing: it checks that every scenario produced its figures, so a change to
the CLI, the config format or the fake that breaks the benchmark shows up in the test suite.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.bench  # `pytest -m "not bench"` skips it locally; CI (plain `pytest`) runs it
def test_bench_smoke(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "bench.run", "--smoke", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-4000:]
    data = json.loads((tmp_path / "latest.json").read_text())
    table = (tmp_path / "latest.md").read_text()
    for scenario in ("S1", "S2", "S3", "S4", "S5", "S6", "S7", "S8"):
        assert f"| {scenario} |" in table

    # Only the stdio MCP scenario may be missing (its server lives in tests/, and is then reported).
    assert all("mcp" in key for key in data["failures"]), data["failures"]
    f = data["figures"]
    for target in ("direct", "floor", "floor-aiohttp", "toolgate"):
        for figure in ("s1_p50_ms", "s2_rps", "s2_cpu_ms", "s3_ttfb_ms", "s3_rps"):
            assert f[target][figure] is not None, (target, figure)
    assert f["toolgate-log"]["s2_rps"] > 0
    assert f["toolgate-calc-0ms"]["rps"] > 0 and f["toolgate-calc-50ms"]["rps"] > 0
    assert f["toolgate-calc-0ms"]["watched"] == {
        "x-toolgate-rounds=1": f["toolgate-calc-0ms"]["watched"]["x-toolgate-rounds=1"],
        "x-toolgate-tool-calls=1": f["toolgate-calc-0ms"]["watched"]["x-toolgate-rounds=1"],
    }  # every request really ran one tool round
    streams = data["plan"]["s5_streams"]
    for target in ("toolgate", "floor", "floor-aiohttp"):
        assert f[f"{target}-s5"]["served"] == streams
        assert f[f"{target}-s5"]["per_stream_kib"] is not None
    assert f["toolgate-2w"]["rps"] > 0 and f["floor-2w"]["rps"] > 0
    assert f["toolgate-nap"]["p50_ms"] is not None
    assert "x-toolgate-tool-calls=8" in f["toolgate-nap"]["watched"]
