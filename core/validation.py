"""One readable line from a pydantic ``ValidationError``: ``field.sub: message; other: message``.

pydantic's own ``str()`` starts "1 validation error for AgentConfig" and spreads over several
lines with a documentation URL; a person at a command line, a model reading a tool reply and a
log all want the fields and what is wrong with them, once, in one line. Every layer formats
validation failures through this (it was written out seven times before).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError


def describe_validation(exc: ValidationError, *, whole: str = "", limit: int | None = None,
                        with_input: bool = False) -> str:
    """``loc: msg`` for each of the first ``limit`` problems, joined with ``; ``.

    ``whole`` names the object when a problem is about all of it (an empty location);
    ``with_input`` shows the value that was refused (``k='x': ...``), for options a person typed.
    """
    parts = []
    for err in exc.errors()[:limit]:
        where = ".".join(map(str, err["loc"])) or whole
        value = f"={err['input']!r}" if with_input and "input" in err else ""
        parts.append(f"{where}{value}: {err['msg']}" if where else err["msg"])
    return "; ".join(parts)
