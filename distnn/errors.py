"""The one exception type users see: a problem with their input, not a bug."""


class DistnnError(Exception):
    """Bad input (an option, a data file, a checkpoint).

    The message is one line that names the problem; the CLI prints it once, from
    rank 0, and every rank exits with status 2. Anything else that escapes is a
    bug and aborts the whole MPI job.
    """
