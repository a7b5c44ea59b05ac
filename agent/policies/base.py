"""Policies decide the next tool calls from the state; registered by name (``--policy``)."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from typing import Any, ClassVar

from langchain_core.messages import AIMessage, AnyMessage, InvalidToolCall, ToolMessage
from langchain_core.messages.tool import invalid_tool_call
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

    def refusing(self, calls: list[InvalidToolCall]) -> Decision:
        """This decision with ``calls`` refused: kept in the turn as ``invalid_tool_calls`` (so the
        conversation shows what the model asked), each answered by an error it reads and an event."""
        if not calls:
            return self
        message = self.message or AIMessage(content="")
        message = message.model_copy(update={"invalid_tool_calls": [*message.invalid_tool_calls, *calls]})
        return self.model_copy(update={
            "message": message,
            "extra_messages": [*self.extra_messages, *(refusal_message(c) for c in calls)],
            "events": [*self.events, *(Event(node="plan", text=f"refused {c['name']}: {str(c['error'])[:140]}",
                                        tool=c["name"]) for c in calls)],
        })

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


def refused_call(call: dict[str, Any], error: str) -> InvalidToolCall:
    """A parsed tool call that will not run, with the reason the model reads."""
    return invalid_tool_call(name=call["name"], args=json.dumps(call["args"], ensure_ascii=False), id=call["id"],
                             error=error)


def refusal_message(call: InvalidToolCall) -> ToolMessage:
    """The error the model reads for a call that was not run, in a tool result's own shape."""
    return ToolMessage(content=json.dumps({"ok": False, "error": call["error"]}), tool_call_id=call["id"],
                       name=call["name"], status="error")


class Policy(ABC):
    name: ClassVar[str]
    # True for a policy whose plan is a chat model's tool calls (``llm``): a run without such a model
    # (``--vlm replay:...`` and no ``--planner``; LLaVA in-process) is refused before it starts.
    needs_tool_calling: ClassVar[bool] = False

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
