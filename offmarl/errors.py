"""Errors the CLI turns into a one-line message and exit code 2."""


class ConfigError(ValueError):
    """Bad user input: an unknown name, an invalid hyper-parameter, a bad file."""
