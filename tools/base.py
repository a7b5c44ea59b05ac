"""What every agent tool shares: a typed error result instead of an exception.

A tool called by a language model must never end a run: an unknown submap id or a latitude of
200 comes back as a ``ToolError`` whose message tells the model what to do instead.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel


class ToolError(BaseModel):
    ok: Literal[False] = False
    error: str  # one sentence a model can act on: what was wrong and what is valid

    def __str__(self) -> str:
        return self.error
