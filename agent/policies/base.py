"""Policies decide the next tool calls from the state; registered by name (``--policy``)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

from pydantic import BaseModel, Field

from agent.context import AgentContext
from agent.schemas import Usage
from agent.state import AgentState, Answer, Event, PendingCall

POLICIES: dict[str, type[Policy]] = {}


class Decision(BaseModel):
    """What a policy returns for one plan step."""

    calls: list[PendingCall] = Field(default_factory=list)
    done: bool = False
    submitted: Answer | None = None
    events: list[Event] = Field(default_factory=list)
    messages: list[dict[str, Any]] = Field(default_factory=list, description="appended to the conversation")
    usage: Usage = Field(default_factory=Usage)
    notes: list[str] = Field(default_factory=list)
    service_failure: str | None = Field(None, description="the planner's model call failed: its kind")


class Policy(ABC):
    name: ClassVar[str]

    def start(self, state: AgentState, ctx: AgentContext) -> dict[str, Any]:
        """State updates after perception (hypotheses, an opening message...)."""
        return {}

    @abstractmethod
    def decide(self, state: AgentState, ctx: AgentContext) -> Decision:
        """The next tool calls, or done."""


def register_policy(cls: type[Policy]) -> type[Policy]:
    POLICIES[cls.name] = cls
    return cls


def make_policy(name: str) -> Policy:
    import agent.policies  # noqa: F401 - registers the built-ins

    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; available: {', '.join(sorted(POLICIES))}")
    return POLICIES[name]()
