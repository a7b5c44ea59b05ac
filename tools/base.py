"""What every agent tool shares: a typed error result instead of an exception.

A tool called by a language model must never end a run: an unknown submap id or a latitude of
200 comes back as a ``ToolError`` whose message tells the model what to do instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ValidationError

from geoguide.core.validation import describe_validation

ArgsT = TypeVar("ArgsT", bound=BaseModel)


class ToolError(BaseModel):
    ok: Literal[False] = False
    error: str  # one sentence a model can act on: what was wrong and what is valid

    def __str__(self) -> str:
        return self.error


def parse_args(model: type[ArgsT], args: ArgsT | Mapping[str, Any], tool: str) -> ArgsT | ToolError:
    """Validate raw tool arguments; every problem becomes one ``ToolError`` naming the fields."""
    if isinstance(args, model):
        return args
    try:
        return model.model_validate(args)
    except ValidationError as e:
        return ToolError(error=f"invalid arguments for {tool}: {describe_validation(e, whole='arguments')}")
