"""The one exception type users see: its message is a single line naming the file or parameter."""

import re


class DiffinjectError(Exception):
    """Bad input or a broken precondition. The CLI prints `error: <message>` and exits non-zero."""


def first_line(exc: BaseException) -> str:
    """The first line of a library's exception message (they run to many lines), without terminal
    escape codes: what goes after the file or parameter in a DiffinjectError."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    return text.splitlines()[0] if text else type(exc).__name__
