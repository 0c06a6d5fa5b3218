"""The exceptions users see, and the exit code each one ends the job with."""

EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3
EXIT_OUT_OF_SYNC = 4
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped on request, a checkpoint to resume from


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
