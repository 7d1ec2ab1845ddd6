"""The one exception type for user mistakes (bad flags, files, data folders).

The CLI prints its message as one line on stderr and exits with code 2; library callers can
catch it. Bugs stay ordinary exceptions, so they keep their tracebacks.
"""


class SpnasError(ValueError):
    """A user-facing error: the message names the argument, file or field at fault."""
