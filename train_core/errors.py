"""The two error types the command line turns into one line: bad user input (exit 2) and a fault it could not
survive (exit 1)."""


class InputError(ValueError):
    """The user's input (a study file, a flag, a data file) is wrong.

    The message is one line that names the bad value and says what is allowed; the CLI prints it and exits 2.
    """


class FaultError(RuntimeError):
    """Something outside the input failed and the run cannot go on: a damaged or unreachable storage, a run folder
    another process holds, checkpoints that cannot be read.

    The message is one line that says what happened and what to do; the CLI prints it and exits 1.
    """
