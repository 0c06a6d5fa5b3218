"""The benchmark harness runs and reports; its figures are read by people, not asserted."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "scripts" / "bench.py"


@pytest.mark.timeout(300)  # the run's own timeout, 180 s, is the hang guard
def test_quick_bench_prints_a_table_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--workloads",
            "quick",
            "--engines",
            "distnn,blas,nosuch",
            "--ranks",
            "1,2",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    rows = json.loads(out.read_text())
    distnn = [r for r in rows if r["engine"] == "distnn"]
    assert sorted(r["ranks"] for r in distnn) == [1, 2]
    assert all(r["samples_per_sec"] > 0 and r["gflops"] > 0 for r in distnn)
    assert all(r["rss_growth_mb"] < 5 for r in distnn), "steady-state training kept memory"
    missing = [r for r in rows if r["engine"] == "nosuch"]
    assert missing and "error" in missing[0]
    assert "distnn" in result.stdout and "of BLAS" in result.stdout
