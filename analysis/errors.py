"""The project's one error type for input a user can fix (a config, a path, a service address, a
study name): the CLI prints it as one line and exits with 2; any other exception is a bug and keeps
its traceback."""


class UserError(ValueError):
    """A problem with the user's input, stated with what to do about it."""
