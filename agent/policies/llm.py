"""``llm``: the model plans with tool calls (list_submaps, search_submap, widen, geocode,
reverse_geocode, submit_location). Its arguments are validated by the toolbox; an invalid call
comes back to it as an error message, so it can correct itself; a failed call ends the run with
what is known."""

from __future__ import annotations

import json

from agent.backends import CallFailed, NotSupportedError, user_message
from agent.context import AgentContext
from agent.policies.base import Decision, Policy, register_policy
from agent.state import AgentState, Event, PendingCall
from agent.toolbox import openai_tools
from prompts.loader import load_prompt

NUDGE = "Please continue by calling a tool; when you are done, call submit_location with your answer and evidence."


def prior_text(state: AgentState) -> str:
    """The prior as the planner sees it (compact JSON), plus any words from the user."""
    if state.perception is None:
        body = f"No usable prior ({state.prior_error or 'no vision model configured'}). Start from the whole map."
    else:
        body = "Prior from the vision model: " + state.perception.model_dump_json(exclude_none=True)
    if state.user_text:
        body += f"\nThe user says: {state.user_text}"
    return body


@register_policy
class LLMPolicy(Policy):
    name = "llm"

    def start(self, state: AgentState, ctx: AgentContext) -> dict:
        system = load_prompt(ctx.config.plan_prompt).render(max_steps=ctx.config.caps.max_tool_calls)
        image = ctx.image(state.image_path, state.image_sha256)
        return {"messages": [{"role": "system", "content": system}, user_message(prior_text(state), image)]}

    def decide(self, state: AgentState, ctx: AgentContext) -> Decision:
        try:
            turn = ctx.backend.chat(state.messages, tools=openai_tools(),
                                    deadline=ctx.config.caps.model_deadline(state.started_at))
        except NotSupportedError as e:
            return Decision(done=True, notes=[f"llm policy unavailable: {e}"])
        except CallFailed as e:
            return Decision(done=True, notes=[f"planner call failed: {e.one_line()}"], service_failure=e.kind)
        messages = [turn.to_message()]
        events = [Event(node="plan", text=turn.content.strip()[:300])] if turn.content and turn.content.strip() else []
        if turn.tool_calls:
            calls = []
            for tc in turn.tool_calls:
                try:
                    args = tc.arguments()
                except ValueError as e:
                    args = {"__invalid__": str(e)}
                calls.append(PendingCall(id=tc.id, name=tc.name, args=args))
            return Decision(calls=calls, messages=messages, events=events, usage=turn.usage)
        nudged = any(m.get("role") == "user" and m.get("content") == NUDGE for m in state.messages)
        if nudged:
            return Decision(done=True, messages=messages, events=events, usage=turn.usage,
                            notes=["the planner stopped without submitting a location"])
        return Decision(messages=[*messages, {"role": "user", "content": NUDGE}], events=events, usage=turn.usage)


def tool_message(call_id: str, result) -> dict:
    """A tool result as the model reads it: compact JSON, long candidate lists trimmed."""
    data = result.model_dump(exclude_none=True)
    if "candidates" in data:
        data["candidates"] = data["candidates"][:10]
    return {"role": "tool", "tool_call_id": call_id, "content": json.dumps(data, ensure_ascii=False)[:6000]}
