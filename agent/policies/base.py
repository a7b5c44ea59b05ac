"""Policies decide the next tool calls from the state; registered by name (``--policy``)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

from langchain_core.messages import AIMessage, AnyMessage
from pydantic import BaseModel, Field

from geoguide.agent.context import AgentContext
from geoguide.agent.schemas import Usage
from geoguide.agent.state import AgentState, Event, SearchIntent
from geoguide.core.registry import Registry

# Every module of this package is a built-in, imported on the first lookup (``--help`` imports none).
POLICIES: Registry[type[Policy]] = Registry("policy", key="name", package="geoguide.agent.policies",
                                            homes={"prior": "prior_only"})


class Decision(BaseModel):
    """What a policy returns for one plan step. Both policies speak in ordinary tool calls: an
    ``AIMessage`` whose ``tool_calls`` LangGraph's ``ToolNode`` runs, so one path serves both."""

    message: AIMessage | None = Field(None, description="the policy's turn; its tool_calls are run next")
    intents: dict[str, SearchIntent] = Field(default_factory=dict, description="tool-call id -> why it searches")
    extra_messages: list[AnyMessage] = Field(default_factory=list, description="appended after the turn")
    done: bool = False
    events: list[Event] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)
    notes: list[str] = Field(default_factory=list)
    service_failure: str | None = Field(None, description="the planner's model call failed: its kind")
    planner_failed: bool = Field(False, description="the planner could not plan this photo: retrieval takes over")

    @classmethod
    def searches(cls, calls: list[tuple[str, int, SearchIntent]], first_id: int) -> Decision:
        """Searches as tool calls (the rules policy's way): ``(submap_id, k, intent)`` each."""
        tool_calls, intents = [], {}
        for i, (submap_id, k, intent) in enumerate(calls, start=first_id):
            call_id = f"search-{i}"
            tool_calls.append({"name": "search_submap", "args": {"submap_id": submap_id, "k": k}, "id": call_id,
                               "type": "tool_call"})
            intents[call_id] = intent
        return cls(message=AIMessage(content="", tool_calls=tool_calls), intents=intents,
                   events=[Event(node="plan", text=i.reason, tool="search_submap", args={"submap_id": sid})
                           for sid, _, i in calls])


class Policy(ABC):
    name: ClassVar[str]

    def start(self, state: AgentState, ctx: AgentContext) -> dict[str, Any]:
        """State updates after perception (hypotheses, an opening message...)."""
        return {}

    @abstractmethod
    def decide(self, state: AgentState, ctx: AgentContext) -> Decision:
        """The next tool calls, or done."""


def register_policy(cls: type[Policy]) -> type[Policy]:
    """``@register_policy``: adds a ``Policy`` subclass under its ``name`` (``--policy NAME``)."""
    return POLICIES.add(cls)


def make_policy(name: str) -> Policy:
    return POLICIES.get(name)()
