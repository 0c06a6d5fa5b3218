"""``python -m distnn.train``: train a network data-parallel on every MPI rank.

    mpirun -n 4 python -m distnn.train              # embedded digits, default network
    python -m distnn.train --dataset data.npz --hidden 128,64 --save model.npz

A thin layer over :func:`distnn.run.loop.train_config`, the code path of
``distnn.fit``: parse the options, run, and turn the outcome into an exit status.
Bad input is one line from rank 0 and status 2 on every rank; an error every rank
sees at the same step (divergence, replicas out of sync, a stop request) ends all
ranks cleanly with its own status; anything else aborts the whole job, so no rank
waits forever. The run's readable output (header, progress, epochs, the ``done:``
line) is on stdout, in order; errors are on stderr. A stdout that is closed (``| head``)
or full (``> /dev/full``) does not end the run: one line on stderr says so, training
goes on, the outputs are written, and the status is the run's (0 when it trained).
"""

from __future__ import annotations

import sys

from distnn.cli import status_decided
from distnn.cli.options import parse_config
from distnn.errors import (
    EXIT_INTERRUPTED,
    EXIT_PREEMPTED,
    DistnnError,
    Interrupted,
    Preempted,
)
from distnn.parallel.failures import install_abort_on_error
from distnn.parallel.world import World
from distnn.run.clock import process_started
from distnn.run.loop import History, train_config
from distnn.run.progress import STREAM_ERRORS, stdout_lost
from distnn.run.records import PHASE_KEYS


def time_split(history: list[dict]) -> str:
    """Where rank 0's step time went over the run, in percent, e.g. 'compute 71%, …'."""
    totals = [sum(r.get(key, 0.0) for r in history) for key in PHASE_KEYS]
    whole = sum(totals)
    if not whole:
        return ""
    parts = (f"{key[:-2]} {t / whole:.0%}" for key, t in zip(PHASE_KEYS, totals, strict=True))
    return " | step time: " + ", ".join(parts)


def summary_line(final: dict, ranks: int) -> str:
    """The ``done:`` line from ``History.final``: the model, where the run stopped, and
    this start's seconds split as :mod:`distnn.run.clock` defines them."""
    acc = final.get("accuracy")
    accuracy = f"test accuracy {acc:.2%}" if acc is not None else "test accuracy n/a"
    test_loss = final.get("test_loss")
    test = f", test loss {test_loss:.4f}" if test_loss is not None else ""
    rate = final["samples_per_sec"]
    speed = f"{rate:,.0f} samples/s" if rate else "no steps taken"
    batch = final.get("batch", 0)  # stopped inside an epoch: the one under way
    where = f"epoch {final['epoch'] + 1}, batch {batch}" if batch else f"epoch {final['epoch']}"
    return (
        f"done: {accuracy}, final loss {final['loss']:.4f}{test}, {speed} on {ranks} rank(s) "
        f"| step {final['step']} ({where}), {final['samples']:,} samples "
        f"| {final['elapsed_s']:.2f} s: start-up {final['startup_s']:.2f}, training "
        f"{final['train_s']:.2f}, evaluation {final['eval_s']:.2f}"
        + (f", checkpoints {final['checkpoint_s']:.2f}" if final["checkpoint_s"] else "")
        + _learning_speed(final)
    )


def _learning_speed(final: dict) -> str:
    """The noise scale, the batch's steps ratio and efficiency, and goodput, if measured."""
    if final.get("noise_scale") is None:
        return ""
    goodput = f", goodput {final['goodput']:,.0f} samples/s" if final.get("goodput") else ""
    return (
        f" | noise scale {final['noise_scale']:,.0f}: {final['steps_ratio']:.2f}× the fewest "
        f"steps, sample efficiency {final['efficiency']:.1%}{goodput}"
    )


def main(argv: list[str] | None = None) -> int:
    world = World()
    install_abort_on_error(world)
    started = process_started()  # the time fields count the interpreter's start-up too
    try:
        config = world.agree(lambda: parse_config(argv, world.rank))
        history: History = train_config(config, world, started=started)
    except Preempted as e:
        status_decided()  # before the line that prints it
        if world.is_root:
            where = (
                f"checkpoint in {config.checkpoint_dir}"
                if config.checkpoint_dir
                else "no --checkpoint-dir, so this run's progress is lost"
            )
            print(
                f"distnn: {e}; {where}; run again with --resume to continue "
                f"(exit {EXIT_PREEMPTED})",
                file=sys.stderr,
            )
        return e.exit_code
    except Interrupted as e:
        status_decided()
        if world.is_root:
            print(f"distnn: {e} (exit {e.exit_code})", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:  # a second Ctrl-C in a world of one
        status_decided()
        print("distnn: interrupted again: stopped at once", file=sys.stderr)
        return EXIT_INTERRUPTED
    except DistnnError as e:  # a CollectiveError: raised on every rank alike
        if world.is_root:
            print(f"distnn: error: {e}", file=sys.stderr)
        return e.exit_code
    if world.is_root:
        # stdout, the stream of every human-readable line of the run (distnn.run.progress),
        # so that the summary comes after the last epoch line in any log. A stdout closed
        # or full by now costs nothing: the outputs are written, the status stays 0.
        try:
            if history.stop_reason and not config.quiet:
                print(f"stopped early: {history.stop_reason}")
            line = summary_line(history.final, world.size)
            print(line + time_split(history), flush=True)
        except STREAM_ERRORS as e:
            stdout_lost(e, going_on="the run finished and its outputs are written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
