"""The planner's model as LangChain sees it: ``PlannerModel``, a ``BaseChatModel`` over any
``ChatBackend`` (the OpenAI API, an OpenAI-compatible server, LLaVA in-process).

The graph's conversation is LangChain messages; a planner turn is ``model.bind_tools(tools)
.invoke(messages)`` and comes back as the ``AIMessage`` the state stores, its tool calls parsed
once. The messages are written in the Chat Completions format exactly once, here, on their way to
the wire (``to_openai``), and the reply is read once, by the backend, from the ``Completion`` its
response cache stores. Everything a served model makes the backend do stays in the backend: json
tool mode when a server ignores or refuses ``tools=``, Hermes ``<tool_call>`` blocks read as
calls, text-only after a refused image; ``adaptations()`` reports them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import (
    AIMessage,
    AnyMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import ConfigDict

from geoguide.agent.backends.base import ChatBackend
from geoguide.agent.backends.errors import NotSupportedError


def to_openai(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    """The conversation in the Chat Completions format (what every backend and cache key speaks).

    Written out rather than delegated to ``convert_to_openai_messages`` because a call with broken
    JSON arguments (an ``invalid_tool_call``) must go back to the server exactly as the model wrote
    it, next to the error the model is meant to read; and a user turn with a photo keeps its parts
    as they are (text, then the ``image_url`` part), so cache keys do not move.
    """
    out: list[dict[str, Any]] = []
    for m in messages:
        if isinstance(m, SystemMessage):
            out.append({"role": "system", "content": m.text})
        elif isinstance(m, HumanMessage):
            out.append({"role": "user", "content": m.content if isinstance(m.content, list) else m.text})
        elif isinstance(m, AIMessage):
            calls = [{"id": c["id"], "type": "function",
                      "function": {"name": c["name"], "arguments": json.dumps(c["args"], ensure_ascii=False)}}
                     for c in m.tool_calls]
            calls += [{"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["args"]}}
                      for c in m.invalid_tool_calls]
            out.append({"role": "assistant", "content": m.text or None, **({"tool_calls": calls} if calls else {})})
        elif isinstance(m, ToolMessage):
            out.append({"role": "tool", "tool_call_id": m.tool_call_id, "content": m.text})
        else:
            raise TypeError(f"cannot send a {type(m).__name__} to a chat model")
    return out


def with_photo(messages: Sequence[AnyMessage], image_part: dict[str, Any]) -> list[AnyMessage]:
    """``messages`` with the photo (an ``image_url`` content part) joined to the first user turn:
    for this call only, so a checkpoint holds the image's path and hash, never its bytes."""
    out = list(messages)
    for i, m in enumerate(out):
        if isinstance(m, HumanMessage):
            out[i] = HumanMessage(content=[{"type": "text", "text": m.text}, image_part])
            break
    return out


class PlannerModel(BaseChatModel):
    """A ``ChatBackend`` as a LangChain chat model; ``bind_tools`` takes LangChain tools or OpenAI
    tool definitions, ``deadline`` (a ``time.time()`` instant, bound or passed) ends every call."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    backend: ChatBackend

    @property
    def _llm_type(self) -> str:
        return f"geoguide-{self.backend.kind}"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"spec": self.backend.spec}

    @property
    def vision(self) -> bool:
        """False for a text-only model (configured so, or after its server refused a photo)."""
        return bool(self.backend.vision)

    def adaptations(self) -> list[str]:
        return self.backend.adaptations()

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        if tool_choice not in (None, "auto"):
            raise NotSupportedError(f"{self.backend.spec}: tool_choice={tool_choice!r} is not supported (only auto)")
        return self.bind(tools=[convert_to_openai_tool(t) for t in tools], **kwargs)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: Any = None,
        *,
        tools: list[dict[str, Any]] | None = None,
        deadline: float | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if stop:
            raise NotSupportedError(f"{self.backend.spec}: stop sequences are not supported")
        if kwargs:
            raise TypeError(f"PlannerModel does not take {', '.join(sorted(kwargs))}")
        message = self.backend.chat(to_openai(messages), tools or None, deadline=deadline)
        return ChatResult(generations=[ChatGeneration(message=message)])


def planner_model(backend: ChatBackend | None) -> PlannerModel | None:
    """The LangChain chat model over ``backend``; None when there is no model to talk to."""
    return None if backend is None else PlannerModel(backend=backend)
