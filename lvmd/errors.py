"""The one exception type the CLI turns into a one-line message and a non-zero exit."""


class UserError(Exception):
    """Bad input from the user (config, data, run id, command); the message is one line."""

    exit_code = 1
