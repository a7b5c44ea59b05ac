"""The one base class of failures a user can act on (a bad file, a wrong option, a dead server).

The command line prints such an error as one line and exits with its ``exit_code``; anything
else is a programming error and gets a distinct code (see ``app.cli``). It lives in the lowest
layer, with no imports, so every layer can raise it and ``geoguide --help`` imports nothing heavy
to recognise it.
"""

from __future__ import annotations


class GeoguideError(Exception):
    """A user-facing failure: printed as ``geoguide: error: <first line>``, exit ``exit_code``."""

    exit_code: int = 2


def first_line(exc: BaseException) -> str:
    """What an exception says, in one line: its message's first line, or its type's name when it
    says nothing (for messages that must stay one line: a library's error often spans several)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
