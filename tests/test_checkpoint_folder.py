"""The checkpoint folder belongs to one run (issue 24, part 2).

Families: the folder's lock (a second run is refused naming the holder, a killed
holder's lock is free at once, distnn.launch's jobs run under its lock); trouble
writing a checkpoint mid-run (warned once, training goes on, the model is saved or
rescued, exit 73 when the last checkpoint failed); a killed writer's debris (cleared);
a checkpoint damaged in any field (skipped, by name, for the older one).

As root, chmod does not stop writes: an unwritable or full folder is simulated by a
folder placed where the checkpoint goes, or by a writer patched in-process.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import error_lines, launch

import distnn
from distnn.errors import EXIT_CHECKPOINT_FAILED, CheckpointFailed, DistnnError
from distnn.io.checkpoints import list_checkpoints
from distnn.io.folder_lock import LOCK_NAME, SHARE_VARIABLE, FolderLock
from distnn.supervisor.outcomes import FINAL_STATUSES

SMALL = ["--dataset", "synthetic:60:4:3", "--hidden", "8", "--batch-size", "10"]  # 6 steps/epoch
HANG_GUARD = 120.0  # seconds: a generous guard against a hang, never a timing assert


def start(args: list[str], cwd: Path, module: str = "distnn.train") -> subprocess.Popen:
    """A run left running in its own session, so that the test can signal all of it."""
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def wait_for(check, proc: subprocess.Popen, what: str):
    """Poll ``check()`` until it is true; the run ending first, or the guard, fails."""
    deadline = time.monotonic() + HANG_GUARD
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        if proc.poll() is not None:
            pytest.fail(
                f"the run ended (exit {proc.returncode}) before {what}: {proc.stderr.read()}"
            )
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"no {what} within {HANG_GUARD:g} s")


def holder(folder: Path) -> dict:
    try:
        return json.loads((folder / LOCK_NAME).read_text())
    except (OSError, ValueError):
        return {}


def end(proc: subprocess.Popen, sig: int) -> int:
    os.killpg(proc.pid, sig)
    try:
        return proc.wait(HANG_GUARD)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("the run did not end after a signal")


# ---------------------------------------------------------------- the folder's lock

LONG = [*SMALL, "--epochs", "100000", "--checkpoint-dir", "ck", "--checkpoint-every", "50"]


@pytest.mark.parametrize("ranks", [1, 2])
def test_second_run_is_refused_naming_the_holder(tmp_path, ranks):
    """While one run trains, a second on its folder ends at once: exit 2 on every rank,
    one line naming the holder's pid, host and start; the first trains on, unharmed,
    and resumes afterwards."""
    first = start(LONG, tmp_path)
    try:
        wait_for(lambda: holder(tmp_path / "ck").get("pid") == first.pid, first, "a lock record")
        wait_for(lambda: list_checkpoints(str(tmp_path / "ck")), first, "a checkpoint")
        second = launch(
            [*SMALL, "--epochs", "2", "--checkpoint-dir", "ck", "--resume"], ranks, cwd=tmp_path
        )
        assert second.returncode == 2, second.stderr[-3000:]
        lines = error_lines(second.stderr)
        assert len(lines) == 1, second.stderr[-3000:]
        assert f"pid {first.pid}" in lines[0] and socket.gethostname() in lines[0], lines[0]
        assert holder(tmp_path / "ck")["started"] in lines[0], lines[0]
        assert "Traceback" not in second.stderr
        assert first.poll() is None, "the first run did not survive the second"
    finally:
        status = end(first, signal.SIGTERM)
    assert status == 75, first.stderr.read()[-3000:]  # preempted, with a checkpoint
    newest = int(Path(list_checkpoints(str(tmp_path / "ck"))[0]).stem.split("-")[1])
    resumed = launch(
        [*SMALL, "--epochs", str(newest // 6 + 2), "--checkpoint-dir", "ck", "--resume", "--quiet"],
        cwd=tmp_path,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]


def test_a_killed_holders_lock_is_free_at_once(tmp_path):
    """SIGKILL leaves no stale lock: the kernel drops it with the process."""
    first = start(LONG, tmp_path)
    wait_for(lambda: holder(tmp_path / "ck").get("pid") == first.pid, first, "a lock record")
    wait_for(lambda: list_checkpoints(str(tmp_path / "ck")), first, "a checkpoint")
    end(first, signal.SIGKILL)
    assert (tmp_path / "ck" / LOCK_NAME).exists()  # the file stays; the lock does not
    after = launch(
        [
            *SMALL,
            "--epochs",
            "100000",
            "--max-time",
            "1",
            "--checkpoint-dir",
            "ck",
            "--resume",
            "--quiet",
        ],
        cwd=tmp_path,
    )
    assert after.returncode == 0, after.stderr[-3000:]


def test_the_lock_in_process(tmp_path, monkeypatch):
    """Held once per folder, even within one process; released on leaving; shared only
    with the token of its holder (what distnn.launch gives its jobs)."""
    monkeypatch.delenv(SHARE_VARIABLE, raising=False)
    with FolderLock.take(str(tmp_path), "ck", "test") as lock:
        with pytest.raises(DistnnError, match=f"pid {os.getpid()} on "):
            FolderLock.take(str(tmp_path), "ck", "test")
        monkeypatch.setenv(SHARE_VARIABLE, "someone else's")
        with pytest.raises(DistnnError, match="in use by another run"):
            FolderLock.take(str(tmp_path), "ck", "test")
        monkeypatch.setenv(SHARE_VARIABLE, lock.token)
        shared = FolderLock.take(str(tmp_path), "ck", "test")
        assert shared.fd is None  # runs under the holder's lock
    monkeypatch.delenv(SHARE_VARIABLE)
    FolderLock.take(str(tmp_path), "ck", "test").release()  # free again


def test_a_run_under_launch_shares_its_lock_and_others_are_refused(tmp_path):
    """distnn.launch holds the folder across attempts; its job runs under that lock,
    and a plain run on the folder meanwhile is refused naming distnn.launch."""
    supervisor = start(["--max-ranks", "1", "--", *LONG], tmp_path, module="distnn.launch")
    try:
        wait_for(lambda: list_checkpoints(str(tmp_path / "ck")), supervisor, "a checkpoint")
        record = holder(tmp_path / "ck")
        assert record["program"] == "distnn.launch" and record["pid"] == supervisor.pid
        other = launch(
            [*SMALL, "--epochs", "2", "--checkpoint-dir", "ck", "--resume"], cwd=tmp_path
        )
        assert other.returncode == 2 and len(error_lines(other.stderr)) == 1, other.stderr
        assert f"distnn.launch, pid {supervisor.pid}" in other.stderr
    finally:
        end(supervisor, signal.SIGTERM)


# ---------------------------------------------------------------- trouble writing


@pytest.mark.parametrize("ranks", [1, 2])
def test_a_folder_where_the_last_checkpoint_goes(tmp_path, ranks):
    """A folder sits where the final checkpoint goes: one warning, training finishes,
    the model is saved, exit 73 naming it and the older checkpoint."""
    args = [*SMALL, "--checkpoint-dir", "ck", "--checkpoint-every", "2", "--quiet"]
    assert launch([*args, "--epochs", "1"], cwd=tmp_path).returncode == 0
    (tmp_path / "ck" / "checkpoint-000000018.npz").mkdir()
    result = launch([*args, "--epochs", "3", "--resume", "--save", "m.npz"], ranks, cwd=tmp_path)
    err = result.stderr
    assert result.returncode == EXIT_CHECKPOINT_FAILED, err[-3000:]
    assert err.count("distnn: warning: cannot write a checkpoint") == 1, err[-3000:]
    lines = error_lines(err)
    assert len(lines) == 1 and "m.npz" in lines[0], err[-3000:]
    assert "checkpoint-000000016.npz" in lines[0], lines[0]  # the newest, older one
    assert distnn.Network.load(str(tmp_path / "m.npz")).num_params == 67
    assert "Traceback" not in err


def _failing_writes(monkeypatch, fails) -> list[int]:
    """save_checkpoint raising OSError(code) at the steps ``fails(step)`` names."""
    import distnn.run.checkpointing as checkpointing

    real, tried = checkpointing.save_checkpoint, []

    def save(directory, ckpt, keep):
        step = ckpt.position["step"]
        tried.append(step)
        code = fails(step)
        if code:
            raise OSError(code, os.strerror(code))
        return real(directory, ckpt, keep)

    monkeypatch.setattr(checkpointing, "save_checkpoint", save)
    return tried


def _arrays():
    rng = np.random.default_rng(0)
    return rng.normal(size=(60, 4)), rng.integers(0, 3, 60)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EACCES, errno.EROFS, errno.EDQUOT])
def test_trouble_mid_run_warns_once_and_trains_on(tmp_path, monkeypatch, capsys, code):
    """Writes fail from step 2 to 10: one warning, every later checkpoint tried, the
    run finishes normally once one is written, and its final checkpoint is there."""
    tried = _failing_writes(monkeypatch, lambda step: code if 2 <= step <= 10 else 0)
    x, y = _arrays()
    net = distnn.Network([4, 8, 3], seed=0)
    history = distnn.fit(
        net,
        x,
        y,
        epochs=3,
        batch_size=10,
        checkpoint_dir=str(tmp_path),
        checkpoint_every=2,
        verbose=0,
    )
    assert len(history) == 3
    assert capsys.readouterr().err.count("distnn: warning: cannot write a checkpoint") == 1
    assert set(tried) == set(range(2, 19, 2))  # retried at each one (an epoch end again)
    assert os.path.basename(list_checkpoints(str(tmp_path))[0]) == "checkpoint-000000018.npz"


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_trouble_to_the_end_rescues_the_model(tmp_path, monkeypatch, capsys, code):
    """No checkpoint can be written after step 4: the run still trains every epoch,
    then ends with CheckpointFailed (73), the model rescued to a file it names."""
    _failing_writes(monkeypatch, lambda step: code if step > 4 else 0)
    x, y = _arrays()
    net = distnn.Network([4, 8, 3], seed=0)
    with pytest.raises(CheckpointFailed) as caught:
        distnn.fit(
            net,
            x,
            y,
            epochs=3,
            batch_size=10,
            checkpoint_dir=str(tmp_path / "ck"),
            checkpoint_every=2,
            verbose=0,
        )
    assert caught.value.exit_code == EXIT_CHECKPOINT_FAILED == 73
    message = str(caught.value)
    assert "checkpoint-000000004.npz" in message  # the newest that holds
    rescued = message.split("the parameters are in ")[1].split(";")[0]
    try:
        assert np.array_equal(distnn.Network.load(rescued).params, net.params)
    finally:
        os.unlink(rescued)
    assert capsys.readouterr().err.count("distnn: warning") == 1


def test_stopped_on_request_without_a_checkpoint_rescues_the_model(tmp_path, monkeypatch, capsys):
    """SIGTERM after step 11, while no checkpoint can be written: not "preempted, a
    checkpoint to resume from" (75) but CheckpointFailed (73), the parameters rescued."""
    _failing_writes(monkeypatch, lambda step: errno.ENOSPC if step > 4 else 0)

    class Terminate:
        def on_step(self, step, loss):
            if step == 11:
                signal.raise_signal(signal.SIGTERM)

        def on_epoch_end(self, record):
            pass

    x, y = _arrays()
    net = distnn.Network([4, 8, 3], seed=0)
    with pytest.raises(CheckpointFailed, match="stopped on request after step 12") as caught:
        distnn.fit(net, x, y, epochs=3, batch_size=10, checkpoint_dir=str(tmp_path / "ck"),
                   checkpoint_every=2, callbacks=[Terminate()], verbose=0)  # fmt: skip
    rescued = str(caught.value).split("the parameters are in ")[1].split(";")[0]
    try:
        assert np.array_equal(distnn.Network.load(rescued).params, net.params)
    finally:
        os.unlink(rescued)
    assert "checkpoint-000000004.npz" in str(caught.value)


def test_a_supervisor_takes_73_as_final():
    assert EXIT_CHECKPOINT_FAILED in FINAL_STATUSES


# ---------------------------------------------------------------- debris

DEBRIS = [".tmp-k3j_x9a2checkpoint-000000004.npz", ".tmp-abcdefghcheckpoint-000999999.npz"]
NOT_DEBRIS = [".tmp-abcdefghmodel.npz", "notes.txt", ".tmp-short-checkpoint-1.npz"]


@pytest.mark.parametrize("when", ["next run", "next save"])
def test_a_killed_writers_temporaries_are_cleared(tmp_path, monkeypatch, when):
    args = [*SMALL, "--checkpoint-dir", "ck", "--checkpoint-every", "2", "--quiet"]
    assert launch([*args, "--epochs", "1"], cwd=tmp_path).returncode == 0
    for name in DEBRIS + NOT_DEBRIS:
        (tmp_path / "ck" / name).write_bytes(b"PK\x03\x04 half a checkpoint")
    if when == "next run":
        result = launch([*args, "--epochs", "1", "--resume"], cwd=tmp_path)  # nothing to train
        assert result.returncode == 0, result.stderr
    else:  # the lock taken by hand: the save finds the debris, not the start
        from distnn.io.checkpoints import Checkpoint
        from distnn.run.checkpointing import Checkpointer

        class Root:
            is_root = True

            def bcast_object(self, obj):
                return obj

        ckpt = Checkpointer(str(tmp_path / "ck"), 2, 3, {}, {}, Root(), lambda: ({}, {}))
        position = {"epoch": 9, "batch_in_epoch": 0, "epoch_loss_sum": 0.0, "step": 54}
        written = ckpt._write(Checkpoint(np.zeros(3), {"t": 0}, position, {}, {}, {}, {}))
        assert written[1] is None, written
    left = set(os.listdir(tmp_path / "ck"))
    assert not left & set(DEBRIS), left
    assert set(NOT_DEBRIS) <= left


# ---------------------------------------------------------------- damaged fields


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """The checkpoints of a 2-epoch run (12 steps of 6 per epoch), every 2 steps."""
    root = tmp_path_factory.mktemp("ck")
    args = [*SMALL, "--epochs", "2", "--checkpoint-dir", "ck", "--checkpoint-every", "2"]
    result = launch([*args, "--quiet"], cwd=root)
    assert result.returncode == 0, result.stderr
    return root / "ck"


def _damage(arrays: dict, **changes) -> dict:
    out = dict(arrays)
    for key, value in changes.items():
        out[key.replace("__", "/")] = value
    return out


DAMAGED = {
    "fingerprint_empty": lambda a: _damage(a, fingerprint=np.array("{}")),
    "fingerprint_without_data": lambda a: _damage(
        a,
        fingerprint=np.array(
            json.dumps({k: v for k, v in json.loads(str(a["fingerprint"])).items() if k != "data"})
        ),
    ),
    "step_negative": lambda a: _damage(a, step=np.array(-12)),
    "step_beyond_int64": lambda a: _damage(a, step=np.array(2**64 - 1, np.uint64)),
    "step_not_the_position": lambda a: _damage(a, step=np.array(10**9)),
    "epoch_huge": lambda a: _damage(a, epoch=np.array(2**62)),
    "batch_in_epoch_past_the_epoch": lambda a: _damage(a, batch_in_epoch=np.array(7)),
    "epoch_loss_sum_nan": lambda a: _damage(a, epoch_loss_sum=np.array(np.nan)),
    "epoch_loss_sum_inf": lambda a: _damage(a, epoch_loss_sum=np.array(np.inf)),
    "optimizer_state_wrong_shape": lambda a: _damage(a, schedule__m=np.zeros(5)),
    "optimizer_state_nan": lambda a: _damage(a, schedule__v=a["schedule/v"] * np.nan),
    "optimizer_state_integers": lambda a: _damage(a, schedule__m=np.zeros(67, np.int64)),
    "optimizer_state_unknown_key": lambda a: _damage(a, schedule__momentum=np.zeros(67)),
    "optimizer_t_negative": lambda a: _damage(a, schedule__t=np.array(-1)),
}


@pytest.mark.parametrize("variant", DAMAGED)
def test_a_damaged_newest_checkpoint_falls_back(checkpoints, tmp_path, variant):
    """The newest checkpoint damaged in one field: skipped with a note naming it, the
    run resumes from the older one and finishes."""
    folder = tmp_path / "ck"
    folder.mkdir()
    *_, older, newest = sorted(list_checkpoints(str(checkpoints)))[-2:]
    for path in (older, newest):
        (folder / os.path.basename(path)).write_bytes(Path(path).read_bytes())
    target = folder / os.path.basename(newest)
    with np.load(target) as f:
        arrays = {k: f[k] for k in f.files}
    np.savez(target, **DAMAGED[variant](arrays))
    result = launch([*SMALL, "--epochs", "3", "--checkpoint-dir", "ck", "--resume"], cwd=tmp_path)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    assert "Traceback" not in out
    skipped = [line for line in out.splitlines() if "skipped" in line]
    assert len(skipped) == 1 and target.name in skipped[0], out[-3000:]
    older_step = int(Path(older).stem.split("-")[1])
    assert f"step {older_step}" in out, out[-3000:]  # "resuming at epoch …, step …"


def test_a_format_2_checkpoint_still_resumes(tmp_path):
    # Format 3 renamed the fingerprint's key from "shape" to "fingerprint".
    args = [*SMALL, "--epochs", "2", "--checkpoint-dir", "ck", "--quiet"]
    assert launch(args, cwd=tmp_path).returncode == 0
    for path in list_checkpoints(str(tmp_path / "ck")):
        with np.load(path) as f:
            arrays = {k: f[k] for k in f.files}
        arrays["shape"] = arrays.pop("fingerprint")
        arrays["format_version"] = np.array(2)
        np.savez(path, **arrays)
    result = launch([*SMALL, "--epochs", "3", "--checkpoint-dir", "ck", "--resume"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "resuming at epoch 3, step 12" in result.stdout


def test_a_checkpoint_after_an_epochs_last_step_resumes(tmp_path):
    # Written after the last step, before the epoch's end (a rank killed in between): the
    # position is batch 6 of 6 in epoch 0, a valid place to resume, not a damaged field.
    args = [*SMALL, "--checkpoint-dir", "ck", "--save", "m.npz", "--quiet"]
    assert launch([*args, "--epochs", "1"], cwd=tmp_path).returncode == 0
    (path,) = list_checkpoints(str(tmp_path / "ck"))
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    assert int(arrays["step"]) == 6 and int(arrays["epoch"]) == 1
    arrays["epoch"], arrays["batch_in_epoch"] = np.array(0), np.array(6)
    np.savez(path, **arrays)
    result = launch([*args[:-1], "--epochs", "2", "--resume"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "skipped" not in result.stdout and "resuming at epoch 1, step 6" in result.stdout
