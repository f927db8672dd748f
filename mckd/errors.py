"""Errors caused by the user's input; the CLI prints their message alone, without a traceback."""


class MckdError(Exception):
    """Base of every error whose message names the file or key at fault and what was expected."""
