"""The exceptions the `spnas` command turns into one line on stderr (spnas/cli.py):

    SpnasError   a user mistake (bad flags, files, data folders)      exit code 2
    ToolError    a tool, runtime or device failed (not the user's)     exit code 1

Library callers can catch them. Bugs stay ordinary exceptions, so they keep their tracebacks.
"""


class SpnasError(ValueError):
    """A user-facing error: the message names the argument, file or field at fault."""


class ToolError(RuntimeError):
    """A tool, runtime or device failed: a conversion, a benchmark, a phone that went away."""
