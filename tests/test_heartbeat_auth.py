"""The heartbeat channel believes only its own job: forged, garbled, replayed, stale or
wrongly keyed datagrams, sent from another process (and, as root, from user ``nobody``),
change nothing but a listener's ``rejected`` count; no datagram makes a listener raise,
stops the watchdog's thread, or gets a process killed by the supervisor.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import pwd
import random
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from test_faults import finish, wait_for
from test_launch import DETERMINISTIC, WATCH, alive, rank_pid, supervise

from distnn.errors import EXIT_HUNG
from distnn.parallel import heartbeat
from distnn.parallel.beat_codec import (
    KEY_VARIABLE,
    MAGIC,
    BeatFields,
    ReplayGuard,
    key_from_text,
    new_key,
    sign,
    verify,
)
from distnn.parallel.heartbeat import Heartbeat, HeartbeatListener
from distnn.parallel.watchdog import HELLO, Watchdog, job_address
from distnn.supervisor.processes import Job

KEY = bytes(range(32))
HOST = socket.gethostname()


def beat(**changes) -> BeatFields:
    fields = {"rank": 0, "pid": 4242, "host": HOST, "attempt": "1", "step": 5, "phase": "train",
              "seq": 1}  # fmt: skip
    return BeatFields(**{**fields, **changes})


def signed_raw(payload: bytes, key: bytes = KEY) -> bytes:
    """A datagram signed with the right key around any payload: a key holder's bug or lie."""
    return MAGIC + hmac.new(key, MAGIC + payload, hashlib.sha256).digest() + payload


def fields_json(**changes) -> bytes:
    fields = {"rank": 0, "pid": 4242, "host": HOST, "attempt": "1", "step": 99, "phase": "train",
              "seq": 50}  # fmt: skip
    return json.dumps({**fields, **changes}).encode()


GENUINE = sign(KEY, beat())  # accepted first in every family test: rank 0 at step 5
FAMILIES = {
    # Anyone on the machine, without the key:
    "unsigned beat naming a pid": fields_json(rank=1, pid=1),
    "a JSON list": b"[1]",
    "Infinity rank": b'{"rank": Infinity}',
    "empty": b"",
    "magic only": MAGIC,
    "garbage": bytes(range(256)) * 3,
    "wrong key": sign(bytes(32), beat(step=99, seq=2)),
    "truncated tag": sign(KEY, beat(step=99, seq=2))[: len(MAGIC) + 16],
    "flipped payload bit": (lambda d: d[:-3] + bytes([d[-3] ^ 1]) + d[-2:])(
        sign(KEY, beat(step=99, seq=2))
    ),
    "64 KiB": MAGIC + b"x" * (65507 - len(MAGIC)),
    # Genuine beats sent again, or of another attempt:
    "replay": GENUINE,
    "older sequence number": sign(KEY, beat(step=99, seq=1)),
    "wrong attempt": sign(KEY, beat(attempt="2", step=99, seq=2)),
    "earlier attempt": sign(KEY, beat(attempt="", step=99, seq=2)),
    # Signed with the key, but out of bounds (a key holder's bug must not crash the ear):
    "rank out of range": signed_raw(fields_json(rank=2)),
    "negative rank": signed_raw(fields_json(rank=-1)),
    "bool rank": signed_raw(fields_json(rank=True)),
    "float step": signed_raw(fields_json(step=99.0)),
    "negative step": signed_raw(fields_json(step=-1)),
    "huge step": signed_raw(fields_json(step=10**400)),
    "NaN step": signed_raw(fields_json(step=0).replace(b'"step": 0', b'"step": NaN')),
    "unknown phase": signed_raw(fields_json(phase="dancing")),
    "list phase": signed_raw(fields_json(phase=["train"])),
    "zero pid": signed_raw(fields_json(pid=0)),
    "long host": signed_raw(fields_json(host="h" * 300)),
    "missing field": signed_raw(b'{"rank": 0, "step": 99}'),
    "extra field": signed_raw(fields_json(extra=1)),
    "deep nesting": signed_raw(b"[" * 500 + b"]" * 500),
    "not UTF-8": signed_raw(b'{"rank": "\xff"}'),
}


def listener_with_one_beat() -> HeartbeatListener:
    listener = HeartbeatListener(KEY)
    listener.reset("1", 0, 0.05, ranks=2)
    assert listener.take(GENUINE)
    return listener


def send_from_another_process(port: int, data: list[bytes], user: int | None = None) -> None:
    """Each of ``data`` to ``port`` from a forked child, as ``user`` (a uid) if given."""
    child = os.fork()
    if child == 0:  # pragma: no cover - the child
        status = 1
        try:
            if user is not None:
                os.setgid(pwd.getpwuid(user).pw_gid)
                os.setuid(user)
            status = 2 if user is not None and os.getuid() != user else 0
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                for datagram in data:
                    sock.sendto(datagram, ("127.0.0.1", port))
        finally:
            os._exit(status)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def wait_rejected(listener: HeartbeatListener, count: int) -> None:
    deadline = time.monotonic() + 30
    while listener.rejected < count and time.monotonic() < deadline:
        listener.poll()
        time.sleep(0.01)


def nobody() -> int:
    return pwd.getpwnam("nobody").pw_uid


SENDERS = [
    "another process",
    pytest.param(
        "user nobody",
        marks=pytest.mark.skipif(os.geteuid() != 0, reason="switching user needs root"),
    ),
]


@pytest.mark.parametrize("sender", SENDERS)
@pytest.mark.parametrize("family", FAMILIES)
def test_a_datagram_the_listener_cannot_verify_changes_nothing(family, sender):
    listener = listener_with_one_beat()
    beats, step = dict(listener.beats), listener.step
    port = listener.sock.getsockname()[1]
    try:
        user = nobody() if sender == "user nobody" else None
        send_from_another_process(port, [FAMILIES[family]], user)
        wait_rejected(listener, 1)
        assert listener.rejected == 1
        assert listener.beats == beats and listener.step == step
        assert listener.local_pids() == [4242]  # what it names is never a pid to kill
    finally:
        listener.sock.close()


# --- the format itself: fast, no processes ------------------------------------------------


def test_sign_and_verify_round_trip_and_bounds():
    assert verify(KEY, sign(KEY, beat())) == beat()
    assert verify(KEY, sign(KEY, beat(rank=3)), ranks=4) == beat(rank=3)
    assert verify(KEY, sign(KEY, beat(rank=4)), ranks=4) is None
    assert verify(new_key(), sign(KEY, beat())) is None
    for family, data in FAMILIES.items():
        if family not in ("replay", "older sequence number", "wrong attempt", "earlier attempt"):
            assert verify(KEY, data, ranks=2) is None, family


def test_the_replay_guard_wants_each_senders_numbers_to_rise():
    guard = ReplayGuard()
    assert guard.fresh(beat(seq=1)) and guard.fresh(beat(seq=3))
    assert not guard.fresh(beat(seq=3)) and not guard.fresh(beat(seq=2))
    assert guard.fresh(beat(seq=1, pid=4243))  # another process of rank 0: its own count
    assert guard.fresh(beat(seq=1, rank=1))


def test_a_key_is_random_and_read_only_whole():
    assert new_key() != new_key() and len(new_key()) == 32
    assert key_from_text(KEY.hex()) == KEY
    for text in (None, "", "zz", KEY.hex()[:-2], KEY.hex() + "00"):
        assert key_from_text(text) is None


def fuzz_datagrams(count: int, seed: int = 24) -> list[bytes]:
    """Random bytes, JSON of every type, huge and non-finite numbers, deep nesting, 64 KiB,
    and beats signed with a wrong key, all seeded."""
    rng = random.Random(seed)
    values = [None, True, 0, -1, 2**63, 10**400, 1.5, "x", [], {}, [1], {"rank": 0}]
    makers = [
        lambda: rng.randbytes(rng.randrange(0, 2048)),
        lambda: json.dumps(rng.choice(values)).encode(),
        lambda: json.dumps({k: rng.choice(values) for k in ("rank", "pid", "step")}).encode(),
        lambda: rng.choice([b"NaN", b"Infinity", b"-Infinity", b'{"step": NaN}']),
        lambda: b"[" * rng.randrange(1, 65_000),  # a UDP datagram holds up to 65,507
        lambda: MAGIC + rng.randbytes(rng.randrange(0, 600)),
        lambda: rng.randbytes(65507),
        lambda: sign(rng.randbytes(32), beat(seq=rng.randrange(1, 10**6))),
    ]
    return [rng.choice(makers)() for _ in range(count)]


def test_fuzz_leaves_the_listener_working():
    listener = listener_with_one_beat()
    beats = dict(listener.beats)
    try:
        data = fuzz_datagrams(600)
        for datagram in data:  # directly: every one counted
            assert listener.take(datagram) is False
        assert listener.rejected == len(data) and listener.beats == beats
        out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for datagram in data:  # and through the socket, polled as a supervisor does
            out.sendto(datagram, listener.sock.getsockname())
            listener.poll()
        out.sendto(sign(KEY, beat(rank=1, step=7, seq=1)), listener.sock.getsockname())
        wait_for(lambda: listener.poll() or 1 in listener.beats, timeout=30)
        assert listener.step == 7 and listener.beats[0] == beats[0]
        out.close()
    finally:
        listener.sock.close()


# --- the sender ---------------------------------------------------------------------------


def test_a_rank_takes_the_supervisors_key_out_of_its_environment(monkeypatch):
    listener = HeartbeatListener(KEY)
    listener.reset(os.environ.get(heartbeat.ATTEMPT_VARIABLE, ""), 0, 0.05, ranks=2)
    monkeypatch.setattr(heartbeat, "_SUPERVISOR_KEY", {})
    monkeypatch.setenv(heartbeat.ADDRESS_VARIABLE, listener.address)
    monkeypatch.setenv(KEY_VARIABLE, KEY.hex())
    try:
        with Heartbeat.from_env(1, 2) as sender:
            assert KEY_VARIABLE not in os.environ  # a process the rank starts has no key
            sender.step = 3
            wait_for(lambda: listener.poll() or listener.step == 3, timeout=30)
        assert listener.beats[1].pid == os.getpid() and listener.rejected == 0
        assert Heartbeat.from_env(1, 2)._listeners  # a second run in this process beats too
    finally:
        listener.sock.close()


def test_without_the_key_a_rank_sends_nothing(monkeypatch):
    monkeypatch.setattr(heartbeat, "_SUPERVISOR_KEY", {})
    monkeypatch.setenv(heartbeat.ADDRESS_VARIABLE, "127.0.0.1:9")
    monkeypatch.delenv(KEY_VARIABLE, raising=False)
    assert Heartbeat.from_env(0, 2)._listeners == []


# --- the watchdog -------------------------------------------------------------------------


class OneHostWorld:
    """Rank 0 of two on this host, in-process; ``say_and_abort`` records instead."""

    rank, size = 0, 2
    ended: tuple[str, int] | None = None

    def local_size(self) -> int:
        return 2

    def bcast_object(self, obj):
        return obj

    def gather_object(self, obj):
        return [obj, None]

    def post_object(self, obj, dest: int, tag: int) -> None:
        pass

    def take_object(self, source: int, tag: int):  # rank 1 answers at once, lending no ear
        return True, socket.gethostname() if tag == HELLO else None

    def say_and_abort(self, message: str, code: int) -> None:
        self.ended = (message, code)


def test_the_watchdog_listens_on_loopback_and_outlives_any_datagram():
    """Fuzz and forged progress for rank 1 from another process: the judge's thread lives
    on, and still ends the job once no step finishes (rank 1 never really reported)."""
    assert job_address(False) == "127.0.0.1"
    world = OneHostWorld()
    sender = Heartbeat(0, interval=0.05)
    with sender, Watchdog(world, 1.0, sender, "--watchdog") as dog:
        listener = dog.listener
        assert listener.sock.getsockname()[0] == "127.0.0.1"
        port = listener.sock.getsockname()[1]
        sender.step = 1  # rank 0 finishes a step: the watchdog is armed
        wait_for(lambda: listener.first_advance_at is not None, timeout=30)
        forged = [fields_json(rank=1, step=s, seq=s, attempt=listener.attempt) for s in (2, 3)]
        data = [b"[1]", b'{"rank": Infinity}', *forged, *fuzz_datagrams(60, seed=7)]
        send_from_another_process(port, data)
        wait_for(lambda: world.ended is not None, timeout=60)
        assert listener.rejected >= 3 and 1 not in listener.beats
    message, code = world.ended
    assert code == EXIT_HUNG and "rank 1 never reported" in message, message


def test_the_watchdogs_thread_survives_a_poll_that_raises(monkeypatch):
    world = OneHostWorld()
    sender = Heartbeat(0, interval=0.05)
    failures = iter([RuntimeError("one bad poll")] * 3)
    real_poll = HeartbeatListener.poll

    def flaky(self):
        error = next(failures, None)
        if error is not None:
            raise error
        real_poll(self)

    monkeypatch.setattr(HeartbeatListener, "poll", flaky)
    with sender, Watchdog(world, 1.0, sender, "--watchdog") as dog:
        sender.step = 1
        wait_for(lambda: world.ended is not None, timeout=60)
        assert dog.errors == 3
    assert world.ended[1] == EXIT_HUNG


# --- the supervisor kills only its own ----------------------------------------------------


def orphan(env: dict | None = None) -> int:
    """A ``sleep`` that is no descendant of this process (its parent shell has exited)."""
    out = subprocess.run(
        ["sh", "-c", "sleep 120 >/dev/null 2>&1 & echo $!"], env=env, capture_output=True,
        text=True, timeout=60, check=True,
    )  # fmt: skip
    return int(out.stdout)


def test_only_the_jobs_own_processes_are_killed(tmp_path):
    """A pid named by a beat is killed only if the process is in the launcher's session
    or was started with the job's mark; a stranger survives."""
    mark = f"{KEY_VARIABLE}={KEY.hex()}"
    stranger = orphan()
    marked = orphan({**os.environ, KEY_VARIABLE: KEY.hex()})
    # A launcher that dies at once, leaving a process in its session behind.
    left = tmp_path / "left-behind"
    job = Job(
        ["sh", "-c", f"sleep 120 >/dev/null 2>&1 & echo $! > {left}"], dict(os.environ), mark=mark
    )
    try:
        wait_for(lambda: job.poll() is not None and left.read_text().strip(), timeout=30)
        in_session = int(left.read_text())
        assert job.owns(in_session) and job.owns(marked) and not job.owns(stranger)
        assert not job.owns(1) and not job.owns(os.getpid())
        job.kill_rest([stranger, marked, in_session, 1, os.getpid()])
        wait_for(lambda: not alive(marked) and not alive(in_session), timeout=30)
        assert alive(stranger)
    finally:
        for pid in (stranger, marked):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_forged_beat_never_gets_a_process_killed_by_the_supervisor(tmp_path):
    """While a short supervised job runs, another process sends beats naming a harmless
    ``sleep`` and garbage that once crashed the supervisor: the job finishes (exit 0), the
    sleep lives."""
    victim = orphan()
    proc = supervise(tmp_path, ["--max-ranks", "2", *WATCH, "--", *DETERMINISTIC,
                                "--epochs", "1"])  # fmt: skip
    stop = threading.Event()

    def forge() -> None:
        wait_for(lambda: (tmp_path / "rank-0").exists() or proc.poll() is not None)
        if proc.poll() is not None:
            return
        environ = Path(f"/proc/{rank_pid(tmp_path, 0)}/environ").read_bytes().split(b"\0")
        address = next(e for e in environ if e.startswith(b"DISTNN_HEARTBEAT="))
        port = int(address.rsplit(b":", 1)[1])
        out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        while not stop.is_set():
            for attempt in ("1", "2"):
                forged = fields_json(rank=7, pid=victim, attempt=attempt, step=0)
                for data in (forged, b"[1]", b'{"rank": Infinity}'):
                    out.sendto(data, ("127.0.0.1", port))
            time.sleep(0.02)
        out.close()

    forger = threading.Thread(target=forge, daemon=True)
    forger.start()
    try:
        status, out, err = finish(proc)
    finally:
        stop.set()
        forger.join(timeout=30)
        survived = alive(victim)
        if survived:
            os.kill(victim, signal.SIGKILL)
    assert status == 0, out + err
    assert "Traceback" not in err and "training finished" in out
    assert survived, "the supervisor killed a process a forged beat named"
