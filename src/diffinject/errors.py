"""The one exception type users see: its message is a single line naming the file or parameter."""


class DiffinjectError(Exception):
    """Bad input or a broken precondition. The CLI prints `error: <message>` and exits non-zero."""
