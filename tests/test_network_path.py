"""The network path: training with MPI forced onto TCP, as between nodes.

On one node MPICH moves data between ranks through shared memory, so the path a
multi-node job depends on goes untested. Here:

- ``test_tcp_loopback_matches_shared_memory`` runs the same training twice on 2 ranks:
  shared memory (the default), and MPICH's libfabric netmod with its ``tcp`` provider
  on the loopback interface, with MPIR_CVAR_NOLOCAL=1 so that MPICH treats every rank
  as a different node and does not use shared memory at all. Each rank records its own
  established TCP connections just before MPI finalizes: the TCP run must have some on
  127.0.0.1, the shared-memory run none. The two models must be bit-for-bit equal (with
  2 ranks the Allreduce adds the same two numbers either way).
- ``test_two_hosts_in_network_namespaces``: two "hosts", each a network namespace made
  by the test (veth pair; the addresses exist only inside the namespaces) with its own
  hostname (a UTS namespace). Hydra's mpiexec runs in the first and starts its proxy on
  each host through ``-launcher ssh -launcher-exec`` with a script that enters the
  host's namespaces instead of ssh-ing (hydra passes the host name and the proxy's
  command line, as it would to ssh). The ranks' traffic crosses the veth; the
  ``--deterministic`` model must equal a 1-process run's bit for bit.

UCX, MPICH's default netmod in the mpich wheel, refuses the loopback interface for TCP
("Destination is unreachable"), hence the libfabric netmod. Nor would UCX do for the
namespaces: it sees one machine and moves the data through shared memory (measured: a
16 MB Allreduce put 21 kB on the veth with UCX, 17 MB with libfabric's tcp provider).

When ranks on one machine pose as separate nodes, distnn's BLAS thread policy sees one
rank per node and gives each rank every core: measured, 2 ranks × 2 spinning OpenBLAS
threads on 2 cores trained 20-50× slower over TCP. The tests set one BLAS thread per
rank, as on real nodes with one core per rank.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import MPIEXEC

pytestmark = pytest.mark.slow

# 64 → 256 → 256 → 10: ~85k parameters, a 340 kB Allreduce per step.
WORKLOAD = ["--dataset", "synthetic:4096:64:10", "--hidden", "256,256", "--epochs", "2"]
ONE_THREAD = {"DISTNN_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
# MPICH over TCP: the libfabric netmod, its tcp provider, no shared memory between ranks.
TCP = {"MPIR_CVAR_CH4_NETMOD": "ofi", "FI_PROVIDER": "tcp", "MPIR_CVAR_NOLOCAL": "1"}

# Runs distnn.train, and just before MPI finalizes (atexit handlers run before mpi4py's
# MPI_Finalize) writes this rank's network namespace, hostname and established TCP
# connections to $NETPROBE_DIR/rank-R.json.
PROBE = """
import atexit, json, os, runpy, socket, sys
from mpi4py import MPI


def address(hex_addr):
    host, port = hex_addr.split(":")
    port = str(int(port, 16))
    if len(host) == 8:
        return socket.inet_ntop(socket.AF_INET, bytes.fromhex(host)[::-1]) + ":" + port
    raw = b"".join(bytes.fromhex(host[i:i + 8])[::-1] for i in range(0, 32, 8))
    return "[" + socket.inet_ntop(socket.AF_INET6, raw) + "]:" + port


def record():
    mine = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            mine.add(target[8:-1])
    connections = []
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        try:
            lines = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if f[3] == "01" and f[9] in mine:  # ESTABLISHED, one of this process's
                connections.append([address(f[1]), address(f[2])])
    rank = MPI.COMM_WORLD.Get_rank()
    with open(os.path.join(os.environ["NETPROBE_DIR"], f"rank-{rank}.json"), "w") as out:
        json.dump({"rank": rank, "netns": os.readlink("/proc/self/ns/net"),
                   "hostname": socket.gethostname(), "tcp": connections}, out)


atexit.register(record)
sys.argv[0] = "distnn.train"
runpy.run_module("distnn.train", run_name="__main__", alter_sys=True)
"""


def run_job(command, env, cwd, timeout=120) -> subprocess.CompletedProcess:
    """Run in its own process group; on a hang kill the whole group and fail."""
    proc = subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(command)} hung for {timeout} s:\n{err}")
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


def probed(tmp_path: Path, name: str) -> tuple[list[str], Path]:
    """The command prefix that runs distnn.train under the probe, and its output folder."""
    (tmp_path / "netprobe.py").write_text(PROBE)
    out = tmp_path / name
    out.mkdir()
    return [sys.executable, str(tmp_path / "netprobe.py")], out


def probes(folder: Path, ranks: int) -> list[dict]:
    found = sorted(folder.glob("rank-*.json"))
    assert len(found) == ranks, f"{len(found)} of {ranks} ranks reported"
    return [json.loads(p.read_text()) for p in found]


def throughput(stdout: str) -> int:
    match = re.search(r"([\d,]+) samples/s on", stdout)
    assert match, stdout
    return int(match.group(1).replace(",", ""))


def weights(path: Path) -> dict:
    with np.load(path) as f:
        return {k: f[k] for k in f.files if k[0] in "Wb"}


def assert_same_model(got: Path, want: Path) -> None:
    a, b = weights(got), weights(want)
    assert a.keys() == b.keys()
    for key in a:
        assert np.array_equal(a[key], b[key]), key


def test_tcp_loopback_matches_shared_memory(tmp_path):
    results = {}
    for path in ("shm", "tcp"):
        probe, folder = probed(tmp_path, path)
        env = {**os.environ, **ONE_THREAD, "NETPROBE_DIR": str(folder)}
        if path == "tcp":
            env.update(TCP, FI_TCP_IFACE="lo")
        result = run_job(
            [MPIEXEC, "-n", "2", *probe, *WORKLOAD, "--save", f"{path}.npz", "--quiet"],
            env,
            cwd=tmp_path,
        )
        assert result.returncode == 0, result.stderr
        assert "on 2 rank(s)" in result.stdout
        results[path] = (throughput(result.stdout), probes(folder, 2))

    shm_rate, shm_ranks = results["shm"]
    tcp_rate, tcp_ranks = results["tcp"]
    print(f"\n2 ranks, {' '.join(WORKLOAD)}: shared memory {shm_rate:,} samples/s, ", end="")
    print(f"TCP on loopback {tcp_rate:,} samples/s ({tcp_rate / shm_rate:.2f}×)")
    for rank in tcp_ranks:
        print(f"rank {rank['rank']} TCP connections: {rank['tcp']}")
    assert all(rank["tcp"] == [] for rank in shm_ranks), shm_ranks
    for rank in tcp_ranks:
        assert rank["tcp"], f"rank {rank['rank']} has no TCP connection"
        for local, remote in rank["tcp"]:
            assert local.startswith("127.") and remote.startswith("127."), rank["tcp"]
    assert_same_model(tmp_path / "tcp.npz", tmp_path / "shm.npz")


# Network namespaces and veth need root and iproute2; unshare comes with util-linux.
def netns_unavailable() -> str | None:
    if sys.platform != "linux":
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "making network namespaces needs root"
    for tool in ("ip", "unshare"):
        if shutil.which(tool) is None:
            return f"no '{tool}' command"
    return None


LAUNCHER = """#!/bin/sh
# Hydra's ssh launcher calls: THIS [-x] HOST "proxy" ARGS... as it would call ssh.
# Enter HOST's network namespace and a UTS namespace with HOST as the hostname.
[ "$1" = -x ] && shift
host=$1
shift
exec ip netns exec "{prefix}$host" unshare --uts sh -c "hostname $host && exec $*"
"""


@pytest.fixture
def two_hosts(tmp_path):
    """Namespaces {prefix}a (10.250.0.1) and {prefix}b (10.250.0.2) joined by a veth."""
    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)
    prefix = f"dnn{os.getpid()}-"
    made = []

    def ip(*args):
        return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=120)

    try:
        for host in "ab":
            result = ip("netns", "add", prefix + host)
            if result.returncode != 0:
                pytest.skip(f"cannot make a network namespace: {result.stderr.strip()}")
            made.append(prefix + host)
        steps = [
            ("link", "add", f"{prefix}va", "type", "veth", "peer", "name", f"{prefix}vb"),
        ]
        for i, host in enumerate("ab", start=1):
            ns = prefix + host
            steps += [
                ("link", "set", f"{prefix}v{host}", "netns", ns),
                ("-n", ns, "link", "set", f"{prefix}v{host}", "name", "eth0"),
                ("-n", ns, "addr", "add", f"10.250.0.{i}/24", "dev", "eth0"),
                ("-n", ns, "link", "set", "eth0", "up"),
                ("-n", ns, "link", "set", "lo", "up"),
            ]
        for step in steps:
            result = ip(*step)
            if result.returncode != 0:
                pytest.skip(f"ip {' '.join(step)}: {result.stderr.strip()}")
        launcher = tmp_path / "netns-launcher.sh"
        launcher.write_text(LAUNCHER.replace("{prefix}", prefix))
        launcher.chmod(0o755)
        yield prefix, launcher
    finally:
        for ns in made:  # deleting a namespace deletes its end of the veth, and the pair
            ip("netns", "delete", ns)


def veth_bytes(ns: str) -> int:
    shown = subprocess.run(
        ["ip", "-n", ns, "-s", "-j", "link", "show", "eth0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr
    stats = json.loads(shown.stdout)[0]["stats64"]
    return stats["rx"]["bytes"] + stats["tx"]["bytes"]


def test_two_hosts_in_network_namespaces(tmp_path, two_hosts):
    prefix, launcher = two_hosts
    args = [*WORKLOAD, "--deterministic", "--quiet"]
    probe, folder = probed(tmp_path, "netns")
    env = {**os.environ, **ONE_THREAD, **TCP, "FI_TCP_IFACE": "eth0", "NETPROBE_DIR": str(folder)}
    command = [
        "ip", "netns", "exec", f"{prefix}a",
        MPIEXEC, "-launcher", "ssh", "-launcher-exec", str(launcher),
        "-iface", "eth0",  # the address the proxies call back: 10.250.0.1
        "-hosts", "a,b", "-n", "2", "-ppn", "1",
        *probe, *args, "--save", "netns.npz",
    ]  # fmt: skip
    before = veth_bytes(f"{prefix}b")
    result = run_job(command, env, cwd=tmp_path)
    crossed = veth_bytes(f"{prefix}b") - before
    assert result.returncode == 0, result.stderr
    assert "on 2 rank(s)" in result.stdout

    ranks = probes(folder, 2)
    print(f"\ntwo hosts over a veth: {throughput(result.stdout):,} samples/s, {crossed:,} bytes")
    for rank in ranks:
        print(f"rank {rank['rank']} on {rank['hostname']} ({rank['netns']}): {rank['tcp']}")
    assert [r["hostname"] for r in ranks] == ["a", "b"]
    assert ranks[0]["netns"] != ranks[1]["netns"]
    own = {"a": "10.250.0.1:", "b": "10.250.0.2:"}
    other = {"a": "10.250.0.2:", "b": "10.250.0.1:"}
    for rank in ranks:
        peers = [c for c in rank["tcp"] if c[1].startswith(other[rank["hostname"]])]
        assert peers, f"rank {rank['rank']} has no TCP connection to the other host"
        assert all(local.startswith(own[rank["hostname"]]) for local, _ in peers)
    # Every step's gradient (~85k values) crossed the veth at least once per epoch's
    # steps; far more than the proxies' own control traffic.
    assert crossed > 1_000_000, crossed

    reference = run_job(
        [sys.executable, "-m", "distnn.train", *args, "--save", "one.npz"],
        {**os.environ, **ONE_THREAD},
        cwd=tmp_path,
    )
    assert reference.returncode == 0, reference.stderr
    assert_same_model(tmp_path / "netns.npz", tmp_path / "one.npz")
