"""Errors that end a command with one clear message (no traceback) and a non-zero exit."""


class HPUError(Exception):
    """Bad input: the message names what is wrong and what to do."""


class InputError(HPUError, ValueError):
    """Data handed to a model, a simulator or a report does not fit the configuration."""
