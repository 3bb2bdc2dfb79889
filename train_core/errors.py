"""The one error type for bad user input."""


class InputError(ValueError):
    """The user's input (a study file, a flag, a data file) is wrong.

    The message is one line that names the bad value and says what is allowed; the CLI prints it and exits 2.
    """
