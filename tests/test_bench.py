"""The benchmark harness runs and reports; its figures are read by people, not asserted."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "scripts" / "bench.py"
sys.path.insert(0, str(SCRIPT.parent))
from bench_workers import ENGINES, PHASES, SCHEDULES, WORKLOADS  # noqa: E402


def bench(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    """``scripts/bench.py args`` in a process of its own, its output captured."""
    command = [sys.executable, str(SCRIPT), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


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
            "distnn,blas",
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
    # The default rule (Adam) and SGD, at each rank count; the ceiling once.
    assert sorted((r["schedule"], r["ranks"]) for r in distnn) == [
        ("adam", 1),
        ("adam", 2),
        ("sgd", 1),
        ("sgd", 2),
    ]
    assert [r["schedule"] for r in rows if r["engine"] == "blas"] == ["-"]
    assert all(r["samples_per_sec"] > 0 and r["gflops"] > 0 for r in distnn)
    assert all(r["rss_growth_mb"] < 5 for r in distnn), "steady-state training kept memory"
    # Where each row's step went: every phase measured, compute and update not empty.
    for r in distnn:
        assert set(r["split"]) == set(PHASES)
        assert r["split"]["compute"] > 0 and r["split"]["update"] > 0
        assert all(t >= 0 for t in r["split"].values())
    assert "distnn" in result.stdout and "of BLAS" in result.stdout
    assert "step split" in result.stdout and " adam " in result.stdout


@pytest.mark.skipif(importlib.util.find_spec("torch") is not None, reason="torch is installed")
def test_a_peer_not_installed_is_a_row_saying_so():
    result = bench(["--workloads", "quick", "--engines", "torch"], timeout=60)
    assert result.returncode == 0, result.stderr
    assert "torch not installed (pip install .[bench])" in result.stdout


def choices(table: dict) -> str:
    return ", ".join(table)


REFUSED = {
    "engine": (["--engines", "foo"], f"unknown engine 'foo' (choose from {choices(ENGINES)})"),
    "engine among known ones": (
        ["--workloads", "quick", "--engines", "distnn,foo"],
        f"unknown engine 'foo' (choose from {choices(ENGINES)})",
    ),
    "empty engine": (
        ["--workloads", "quick", "--engines", "distnn,"],
        f"unknown engine '' (choose from {choices(ENGINES)})",
    ),
    "workload": (
        ["--workloads", "quick,bar", "--engines", "blas"],
        f"unknown workload 'bar' (choose from {choices(WORKLOADS)})",
    ),
    "schedule": (
        ["--workloads", "quick", "--schedules", "sgd,rmsprop"],
        f"unknown schedule 'rmsprop' (choose from {', '.join(SCHEDULES)})",
    ),
    # With both wrong, the first checked is named; with busy cores, none is started.
    "both": (
        ["--workloads", "bar", "--engines", "foo", "--busy", "1"],
        f"unknown workload 'bar' (choose from {choices(WORKLOADS)})",
    ),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_unknown_names_are_refused_in_one_line_before_any_work(tmp_path, case):
    args, message = REFUSED[case]
    out = tmp_path / "bench.json"
    # Refusing needs no measurement: seconds, where one measurement of "compute" is minutes.
    result = bench([*args, "--json", str(out)], timeout=30)
    assert result.returncode == 2, result.stderr
    assert result.stderr == f"bench.py: error: {message}\n"
    assert result.stdout == "" and not out.exists()
