"""docker/ checked the ways CI can without a Docker engine.

- The Dockerfile lints clean with hadolint, the shell scripts (docker/, scripts/slurm/)
  with shellcheck, and compose.yaml validates against the Compose specification.
- The image's install step, docker/install-distnn.sh, runs into a clean venv from the
  files the Dockerfile copies, and the image's CMD trains from that venv.
- The compose cluster is rebuilt from the same parts without Docker: each service a
  network namespace with its own hostname on one bridge (names resolved through
  /etc/netns/NS/hosts, as Docker's DNS would), entrypoint.sh started as in compose.yaml
  under a throwaway non-root user, compose.yaml's own command and environment for the
  launcher (its /cluster paths moved under the user's home). The launcher reaches the
  workers over ssh, 4 ranks train on 2 "nodes", rank 0 writes the shared checkpoint
  folder, and a second run resumes from it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from distnn.io.metrics_log import epoch_records

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
COMPOSE = DOCKER / "compose.yaml"
# The image install (pip) and the cluster (apt-get install openssh-server, if missing) may
# take a while on a slow mirror: more than the default 120 s per test.
pytestmark = pytest.mark.timeout(420)
# Taken around apt-get here and in scripts/slurm/local-slurm.sh (tests run in parallel).
APT_LOCK = "/tmp/distnn-apt.lock"

SHELL_SCRIPTS = [
    DOCKER / "entrypoint.sh",
    DOCKER / "install-distnn.sh",
    ROOT / "scripts" / "slurm" / "local-slurm.sh",
    ROOT / "scripts" / "slurm" / "train.sbatch",
]


def tool(name: str) -> str:
    """A linter from the test extra, next to this Python first."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (pip install -e '.[test]')")
    return found


def run(command, timeout=120, **kwargs) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{' '.join(map(str, command))} did not end in {timeout} s:\n{e.stderr}")


def test_dockerfile_lints_clean():
    result = run([tool("hadolint"), "--failure-threshold", "info", str(DOCKERFILE)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_shell_scripts_lint_clean():
    result = run([tool("shellcheck"), *map(str, SHELL_SCRIPTS)])
    assert result.returncode == 0, result.stdout + result.stderr


def compose() -> dict:
    compose_spec = pytest.importorskip("compose_spec", reason="pip install -e '.[test]'")
    parsed = compose_spec.PyCompose.from_yaml(COMPOSE.read_text())
    parsed.to_spec()  # validates every field against the specification
    return parsed.to_dict()


def test_compose_file_is_valid():
    spec = compose()
    services, volumes = spec["services"], set(spec.get("volumes", {}))
    assert {"launcher", "worker1", "worker2"} <= set(services)
    for name, service in services.items():
        assert service.get("hostname") == name
        build = service["build"]
        assert (DOCKER / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
        for dep in service.get("depends_on", []):
            assert dep in services, f"{name} depends on unknown {dep}"
        for mount in service.get("volumes", []):
            source = mount["source"] if isinstance(mount, dict) else mount.split(":")[0]
            assert source in volumes, f"{name} mounts undeclared volume {source}"
    launcher = services["launcher"]
    hosts = [h.split(":")[0] for h in launcher["environment"]["DISTNN_HOSTS"].split(",")]
    assert all(h in services for h in hosts)
    assert launcher["command"][0] == "launcher"
    assert all(services[h]["command"] == ["worker"] for h in hosts)


def dockerfile_copies() -> list[str]:
    """Paths the Dockerfile copies into /src, relative to the build context."""
    paths = []
    for line in DOCKERFILE.read_text().splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and words[-1].startswith("/src"):
            paths += [w for w in words[1:-1] if not w.startswith("--")]
    return paths


def dockerfile_cmd() -> list[str]:
    lines = [ln for ln in DOCKERFILE.read_text().splitlines() if ln.startswith("CMD ")]
    return json.loads(lines[-1][4:])


def debian_python() -> str | None:
    """Debian's python3 with venv: like the image's, and runnable by any user."""
    python = "/usr/bin/python3"
    if not os.access(python, os.X_OK):
        return None
    ok = run([python, "-c", "import venv, ensurepip"])
    return python if ok.returncode == 0 else None


@pytest.fixture(scope="module")
def image_venv():
    """docker/install-distnn.sh into a clean venv, from what the Dockerfile copies.

    The folder is world-readable so the cluster test's non-root user can run it."""
    base = Path(tempfile.mkdtemp(prefix="distnn-image-", dir="/tmp"))
    base.chmod(0o755)
    src, bindir = base / "src", base / "bin"  # the image's /src and /usr/local/bin
    src.mkdir()
    bindir.mkdir()
    text = DOCKERFILE.read_text()
    assert "COPY --chmod=0755 docker/install-distnn.sh docker/entrypoint.sh /usr/local/bin/" in text
    assert "RUN install-distnn.sh /src /opt/distnn" in text
    for script in ("install-distnn.sh", "entrypoint.sh"):
        shutil.copy(DOCKER / script, bindir / script)
        (bindir / script).chmod(0o755)
    for path in dockerfile_copies():
        if (ROOT / path).is_dir():
            shutil.copytree(ROOT / path, src / path, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / path, src / path)
    python = debian_python()
    # install-distnn.sh runs `python3` from PATH, as in the image.
    pybin = str(Path(python or sys.executable).parent)
    env = {**os.environ, "PATH": f"{pybin}{os.pathsep}{os.environ['PATH']}"}
    env.pop("VIRTUAL_ENV", None)
    started = time.monotonic()
    result = run([str(bindir / "install-distnn.sh"), str(src), str(base / "venv")], 300, env=env)
    print(f"\ninstall-distnn.sh into a clean venv: {time.monotonic() - started:.1f} s")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert re.search(r"^distnn \d", result.stdout, re.M), result.stdout
    yield base, python is not None
    shutil.rmtree(base, ignore_errors=True)


@pytest.mark.slow
def test_image_install_and_default_command(image_venv, tmp_path):
    venv = image_venv[0] / "venv"
    # The installed package, not the source tree, is what runs.
    where = run(
        [str(venv / "bin" / "python"), "-c", "import distnn; print(distnn.__file__)"],
        cwd=tmp_path,
    )
    assert where.returncode == 0, where.stderr
    assert str(venv) in where.stdout
    env = {**os.environ, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)
    cmd = dockerfile_cmd()
    assert cmd[:3] == ["mpirun", "-n", "4"]
    result = run(cmd, 120, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "on 4 rank(s)" in result.stdout
    assert "done: test accuracy" in result.stdout


# --- the compose cluster, without Docker -------------------------------------------


def cluster_unavailable() -> str | None:
    if sys.platform != "linux":
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "network namespaces and a throwaway user need root"
    for name in ("ip", "unshare", "runuser", "useradd", "userdel", "ssh", "ssh-keygen"):
        if shutil.which(name) is None:
            return f"no '{name}' command"
    return None


def ensure_sshd() -> str | None:
    """/usr/sbin/sshd, installed from Debian's openssh-server if needed (root, apt-get)."""
    if os.access("/usr/sbin/sshd", os.X_OK):
        return None
    if shutil.which("apt-get") is None:
        return "no sshd and no apt-get to install it"
    # scripts/slurm/local-slurm.sh may be installing Slurm from another test worker at
    # the same moment: one apt-get (and one policy-rc.d) at a time, by the same lock.
    with open(APT_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the module's timeout is the hang guard
        if os.access("/usr/sbin/sshd", os.X_OK):
            return None
        return _install_sshd()


def _install_sshd() -> str | None:
    policy = Path("/usr/sbin/policy-rc.d")
    made_policy = not policy.exists()
    if made_policy:  # keep the package from starting a system sshd
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for step in (
            ["apt-get", "update", "-qq"],
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "openssh-server"],
        ):
            done = run(step, 300, env=env)
            if done.returncode != 0:
                return f"{' '.join(step)} failed: {done.stderr.strip()[-300:]}"
    finally:
        if made_policy:
            policy.unlink()
    return None if os.access("/usr/sbin/sshd", os.X_OK) else "openssh-server gave no sshd"


def user_pids(uid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    pids.append(int(entry))
            except FileNotFoundError:
                pass
    return pids


@pytest.fixture
def cluster(image_venv):
    """Namespaces for launcher, worker1, worker2 on a bridge; a throwaway user."""
    base, usable = image_venv
    venv, bindir = base / "venv", base / "bin"
    reason = cluster_unavailable() or (
        None if usable else "no Debian python3 with venv: the test user cannot run /root's"
    )
    reason = reason or ensure_sshd()
    if reason:
        pytest.skip(reason)
    tag = f"dnc{os.getpid() % 100000}"
    user, home = tag, Path(f"/home/{tag}")
    hosts = ["launcher", "worker1", "worker2"]
    namespaces = {h: f"{tag}{h[0]}{h[-1]}" for h in hosts}  # dncNNNNNlr, …w1, …w2
    switch = f"{tag}sw"
    made: list[str] = []
    workers: list[subprocess.Popen] = []

    def ip(*args):
        done = run(["ip", *args])
        if done.returncode != 0:
            pytest.skip(f"ip {' '.join(args)}: {done.stderr.strip()}")

    try:
        added = run(["useradd", "--create-home", "--home-dir", str(home), "-s", "/bin/bash", user])
        assert added.returncode == 0, added.stderr
        uid = pwd.getpwnam(user).pw_uid
        for ns in [switch, *namespaces.values()]:
            ip("netns", "add", ns)
            made.append(ns)
        ip("-n", switch, "link", "add", "br0", "type", "bridge")
        ip("-n", switch, "link", "set", "br0", "up")
        names = "127.0.0.1 localhost\n"
        for i, host in enumerate(hosts, start=1):
            ns, a, b = namespaces[host], f"{tag}a{i}", f"{tag}b{i}"
            ip("link", "add", a, "type", "veth", "peer", "name", b)
            ip("link", "set", a, "netns", ns)
            ip("-n", ns, "link", "set", a, "name", "eth0")
            ip("-n", ns, "addr", "add", f"10.251.0.{i + 1}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
            ip("-n", ns, "link", "set", "lo", "up")
            ip("link", "set", b, "netns", switch)
            ip("-n", switch, "link", "set", b, "master", "br0")
            ip("-n", switch, "link", "set", b, "up")
            names += f"10.251.0.{i + 1} {host}\n"
        for ns in namespaces.values():  # `ip netns exec` mounts it over /etc/hosts
            Path(f"/etc/netns/{ns}").mkdir(parents=True, exist_ok=True)
            Path(f"/etc/netns/{ns}/hosts").write_text(names)

        # The containers' /cluster volumes, and one home per container.
        for sub in ("cluster/keys", "cluster/checkpoints", "worker1", "worker2"):
            (home / sub).mkdir(parents=True, exist_ok=True)
        (home / "cluster" / "keys").chmod(0o700)
        run(["chown", "-R", f"{user}:{user}", str(home)])

        def enter(host: str, env: dict, args: list[str]) -> list[str]:
            # ssh reads ~/.ssh/config from the passwd entry's home, not $HOME: the
            # launcher gets that one; each worker its own, for its sshd host key.
            own = home if host == "launcher" else home / host
            path = f"{venv / 'bin'}:{bindir}:/usr/bin:/bin"  # as the image's PATH
            env = {"HOME": str(own), "PATH": path, **env}
            inner = " ".join(
                ["exec", "runuser", "-u", user, "--", "env", "-i"]
                + [shlex.quote(f"{k}={v}") for k, v in env.items()]
                + [str(bindir / "entrypoint.sh"), *map(shlex.quote, args)]
            )
            # Start in that home, as the image's WORKDIR: hydra's proxies chdir on the
            # workers to the launcher's working directory, and the test's own (the
            # checkout, perhaps in a mode-0700 folder) is one the test user cannot enter.
            return ["ip", "netns", "exec", namespaces[host], "unshare", "--uts", "sh", "-c",
                    f"hostname {host} && cd {shlex.quote(str(own))} && {inner}"]  # fmt: skip

        keys = {"DISTNN_KEYS": str(home / "cluster" / "keys")}
        for host in ("worker1", "worker2"):
            workers.append(
                subprocess.Popen(
                    enter(host, keys, ["worker"]),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    start_new_session=True,
                )
            )
        yield enter, home, keys, namespaces
    finally:
        for proc in workers:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                print(f"--- worker: {proc.communicate(timeout=60)[0].strip()}")
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        try:
            uid = pwd.getpwnam(user).pw_uid
        except KeyError:
            uid = None
        if uid is not None:
            for pid in user_pids(uid):  # the test user's sshd sessions, if any remain
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            run(["userdel", "--remove", user])
        for ns in made:
            run(["ip", "netns", "delete", ns])
            shutil.rmtree(f"/etc/netns/{ns}", ignore_errors=True)
        with contextlib.suppress(OSError):  # others' namespaces may use it
            Path("/etc/netns").rmdir()
        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.slow
def test_compose_cluster_without_docker(cluster):
    enter, home, keys, namespaces = cluster
    launcher = compose()["services"]["launcher"]
    # compose.yaml's paths under /cluster are the shared volumes: here, under home.
    args = [a.replace("/cluster/", f"{home}/cluster/") for a in launcher["command"][1:]]
    env = {**launcher["environment"], **keys}
    command = enter("launcher", env, ["launcher", *args, "--quiet"])
    runs = []
    for attempt in range(2):
        started = time.monotonic()
        result = run(command, 120)
        runs.append(time.monotonic() - started)
        print(f"\nlauncher run {attempt + 1} ({runs[-1]:.1f} s):\n{result.stdout}{result.stderr}")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "launcher: mpiexec -hosts worker1:2,worker2:2 -n 4" in result.stdout
        assert "on 4 rank(s)" in result.stdout
    checkpoints = home / "cluster" / "checkpoints"
    assert list((checkpoints / "run").glob("checkpoint-*.npz"))
    assert len(epoch_records(str(checkpoints / "metrics.jsonl"))) == 40
    with np.load(checkpoints / "model.npz") as f:
        assert {"W1", "b1", "W2", "b2"} <= set(f.files)
    # The ranks ran on the workers, not on the launcher: the traffic crossed worker2's link.
    shown = run(["ip", "-n", namespaces["worker2"], "-s", "-j", "link", "show", "eth0"])
    stats = json.loads(shown.stdout)[0]["stats64"]
    assert stats["rx"]["bytes"] > 1_000_000, stats
