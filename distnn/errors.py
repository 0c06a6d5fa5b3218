"""The exceptions users see, and the exit code each one ends the job with."""

EXIT_BROKEN_PIPE = 1  # stdout closed early (| head): Python's own status on EPIPE
EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3
EXIT_OUT_OF_SYNC = 4
# EX_CANTCREAT: the run ended (trained, or stopped on request) but its last checkpoint
# could not be written (folder full or unwritable, a folder where the file goes): the
# model is saved with --save or rescued, and the error names where; the newest checkpoint
# in the folder, if any, is older. Restarting would redo work into the same folder.
EXIT_CHECKPOINT_FAILED = 73
EXIT_SAVE_FAILED = 74  # EX_IOERR: trained, but --save failed; the error names a copy
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped on request, a checkpoint to resume from
EXIT_GAVE_UP = 76  # distnn.launch: restarting could not help (budget, the same failure twice)
EXIT_HUNG = 77  # the watchdog: no step finished for too long (a frozen rank); job ended
EXIT_INTERRUPTED = 130  # 128 + SIGINT: stopped on request with nothing to resume from


class DistnnError(Exception):
    """Bad input (an option, a data file, a checkpoint).

    The message is one line that names the problem; the CLI prints it once, from
    rank 0, and every rank exits with ``exit_code``.
    """

    exit_code = EXIT_BAD_INPUT


class CollectiveError(DistnnError):
    """An error every rank raises at the same step, decided on values that are
    identical on all ranks (an Allreduce result), so all ranks can exit cleanly
    together. Any other exception during training aborts the whole job instead."""


class DivergenceError(CollectiveError):
    exit_code = EXIT_DIVERGED


class ReplicaMismatchError(CollectiveError):
    exit_code = EXIT_OUT_OF_SYNC


class Preempted(CollectiveError):
    """A rank got SIGTERM or SIGINT; all ranks stopped after the same step."""

    exit_code = EXIT_PREEMPTED


class Interrupted(CollectiveError):
    """Stopped on request (SIGTERM, SIGINT) with no checkpoint to resume from."""

    exit_code = EXIT_INTERRUPTED


class SaveFailed(CollectiveError):
    """Training finished but the model could not be written where asked."""

    exit_code = EXIT_SAVE_FAILED


class CheckpointFailed(CollectiveError):
    """The run ended without its last checkpoint written; the model is saved or rescued."""

    exit_code = EXIT_CHECKPOINT_FAILED


class ScheduleError(CollectiveError):
    """A user schedule's step that cannot update the parameters (checked once, at step 1)."""


class StopTraining(Exception):
    """Raised by a callback's ``on_step`` or ``on_epoch_end`` (on any rank) to end the
    run cleanly: every rank stops after the same step, with outputs and checkpoints
    written as at the last epoch; ``History.stop_reason`` carries the message.
    Returning ``True`` from the callback does the same."""


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (its type's name if it has none): how a
    ``DistnnError`` quotes the error beneath it."""
    return " ".join(str(exc).split()) or type(exc).__name__
