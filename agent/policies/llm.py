"""``llm``: the model plans with tool calls (list_submaps, search_submap, widen, geocode,
reverse_geocode, submit_location), run by the graph's ``ToolNode`` like the rules policy's.

The conversation lives in the state as LangChain messages without pixels: the photo is attached
to the first user message only when the planner is called (and only for a planner that can see),
so a checkpoint holds the image's path and hash, never its bytes. A call whose arguments are not
JSON comes back to the model as an error it can correct; a failed planner call ends the run with
what is known (or, for an unusable server, raises unless a retrieval fallback was asked for).
"""

from __future__ import annotations

import json
from typing import Any

from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage

from geoguide.agent.backends import CallFailed, NotSupportedError, image_content_part, usage_of
from geoguide.agent.backends.chat_model import PlannerModel, with_photo
from geoguide.agent.backends.errors import SERVICE_FAILURES
from geoguide.agent.context import AgentContext
from geoguide.agent.policies.base import Decision, Policy, refused_call, register_policy
from geoguide.agent.state import AgentState, Event
from geoguide.agent.toolbox import openai_tools
from geoguide.indices.submaps import WHOLE_MAP
from geoguide.prompts.loader import load_prompt

NO_SUBMISSION = "the planner stopped without submitting a location; answered from the evidence it gathered"
NUDGE = "Please continue by calling a tool; when you are done, call submit_location with your answer and evidence."


MAX_SUBMAP_HINTS = 8


def submap_hint(state: AgentState, ctx: AgentContext) -> str:
    """Submap ids that exist in this index around the prior, so a planner starts from valid ids
    (SmolLM2 invented 'country:FV' and '1234567890' without them; see tests/integration)."""
    ids: list[str] = []
    table = ctx.index.scheme_of("country")
    if table is not None and state.prior_country:
        from geoguide.geo import neighbours

        for iso in [state.prior_country, *neighbours(state.prior_country)]:
            if iso in table.spans and len(ids) < MAX_SUBMAP_HINTS:
                ids.append(table.scheme.submap_id(iso))
    ids.append(WHOLE_MAP)
    return "Submap ids you can search: " + ", ".join(ids) + " (list_submaps gives more)."


def prior_text(state: AgentState, ctx: AgentContext) -> str:
    """The prior as the planner sees it (compact JSON), valid submap ids, and any words from the user."""
    if state.perception is None:
        body = f"No usable prior ({state.prior_error or 'no vision model configured'}). Start from the whole map."
    else:
        body = "Prior from the vision model: " + state.perception.model_dump_json(exclude_none=True)
    body += "\n" + submap_hint(state, ctx)
    if state.user_text:
        body += f"\nThe user says: {state.user_text}"
    return body


def call_key(name: str, args: dict[str, Any]) -> str:
    return name + json.dumps(args, sort_keys=True, ensure_ascii=False)


def failed_calls(state: AgentState) -> dict[str, str]:
    """Calls that already came back as errors in this conversation, with their error: a small
    model at temperature 0 repeats a failing call until the cap otherwise (SmolLM2 did, 9 times)."""
    errors = {m.tool_call_id: m.text for m in state.messages if isinstance(m, ToolMessage) and m.status == "error"}
    return {call_key(c["name"], c["args"]): errors[c["id"]] for m in state.messages if isinstance(m, AIMessage)
            for c in m.tool_calls if c["id"] in errors}


def planner_notes(state: AgentState, model: PlannerModel) -> list[str]:
    """What the planner's backend changed on its own (json tool mode, text-only), as notes this run
    does not hold yet: the backend is shared by every photo of a run and stays adapted, so each
    photo's prediction says how it was planned, once."""
    return [note for note in (f"planner: {a}" for a in model.adaptations()) if note not in state.notes]


TAKEOVER_NOTE = "retrieval (the rules pipeline) finishes the photo"
REPEATED = "this exact call already failed"


def _only_repeats(invalid: list[dict[str, Any]]) -> bool:
    """Every refused call was refused for repeating a failed one (False for none)."""
    return bool(invalid) and all(str(c.get("error") or "").startswith(REPEATED) for c in invalid)


def _last_invalid(state: AgentState) -> list[dict[str, Any]]:
    """The refused calls of the planner's previous turn."""
    last = next((m for m in reversed(state.messages) if isinstance(m, AIMessage)), None)
    return list(last.invalid_tool_calls) if last is not None else []


def retrieval_takeover(state: AgentState, ctx: AgentContext) -> Decision:
    """The rules pipeline's next step from the prior: how a photo whose planner failed is finished
    (the plan node marks the state ``planner_down`` on ``planner_failed`` and knows no more). The
    hypotheses are derived again each step rather than stored: they depend only on the prior, the
    config and the index."""
    from geoguide.agent.policies.rules import RulesPolicy, hypotheses

    hyps = state.hypotheses or hypotheses(state, ctx)
    return RulesPolicy().decide(state.model_copy(update={"hypotheses": hyps}), ctx)


@register_policy
class LLMPolicy(Policy):
    name = "llm"
    needs_tool_calling = True

    def start(self, state: AgentState, ctx: AgentContext) -> dict:
        system = load_prompt(ctx.config.plan_prompt).render(max_steps=ctx.config.caps.max_tool_calls)
        return {"messages": [SystemMessage(system), HumanMessage(prior_text(state, ctx))]}

    def decide(self, state: AgentState, ctx: AgentContext) -> Decision:
        """The planner's next calls; once it has failed on this photo, the rules pipeline's."""
        if state.planner_down:
            return retrieval_takeover(state, ctx)
        d = self._plan(state, ctx)
        if not d.planner_failed:
            return d
        # Retrieval answers without the planner, from the prior, and the notes say so.
        takeover = retrieval_takeover(state, ctx)
        return takeover.model_copy(update={"notes": [*d.notes, TAKEOVER_NOTE], "service_failure": d.service_failure,
                                           "usage": d.usage + takeover.usage, "planner_failed": True})

    def _plan(self, state: AgentState, ctx: AgentContext) -> Decision:
        model = ctx.planner_model()
        if model is None:
            return Decision(done=True, notes=[f"llm policy unavailable: {ctx.backend.spec} cannot chat and no "
                                              "--planner was given; use an openai, openai-compatible or llava model"])
        messages = state.messages
        if model.vision:
            messages = with_photo(messages, image_content_part(ctx.image(state.image_path, state.image_sha256)))
        try:
            turn = model.bind_tools(openai_tools()).invoke(
                messages, deadline=ctx.config.caps.model_deadline(state.started_at))
        except NotSupportedError as e:
            return Decision(done=True, notes=[*planner_notes(state, model), f"llm policy unavailable: {e}"])
        except CallFailed as e:
            adapted = planner_notes(state, model)
            if e.kind in ("exhausted", "rejected") and any(isinstance(m, AIMessage) for m in state.messages):
                # The planner has answered this photo before: a slow model used up the photo's
                # budget (or its context filled up), a cap reached, not a server that cannot be used.
                return Decision(done=True, notes=[*adapted, f"the planner stopped ({e}): answering with what is known"])
            return Decision(done=True, notes=[*adapted, f"planner call failed: {e.one_line()}"], planner_failed=True,
                            service_failure=e.kind if e.kind in SERVICE_FAILURES else None)
        adapted = planner_notes(state, model)
        usage = usage_of(turn)
        events = [Event(node="plan", text=turn.text.strip()[:300])] if turn.text.strip() else []
        valid, invalid = [], list(turn.invalid_tool_calls)  # arguments that are not a JSON object: refused
        failed = failed_calls(state)
        submitted = False
        for tc in turn.tool_calls:
            # Refused up front, with a reason the model reads: a second submit_location in one turn
            # (the answer is written once), a call that already failed. (The tool-call cap is the
            # plan node's, for every policy.)
            error = None
            if tc["name"] == "submit_location" and submitted:
                error = "submit_location was already called in this turn; only the first counts"
            elif (key := call_key(tc["name"], tc["args"])) in failed:
                error = (f"{REPEATED} ({failed[key][:200]}); do not repeat it: "
                         f"{submap_hint(state, ctx)} Or call submit_location with your answer.")
            if error is not None:
                invalid.append(refused_call(tc, error))
                continue
            submitted = submitted or tc["name"] == "submit_location"
            valid.append(tc)
            events.append(Event(node="plan", text=f"call {tc['name']}", tool=tc["name"], args=tc["args"]))
        message = AIMessage(content=turn.content, tool_calls=valid)
        events += [Event(node="plan", text=note) for note in adapted]
        if not valid and invalid and _only_repeats(invalid) and _only_repeats(_last_invalid(state)):
            # Told once that the exact call failed, the model made it again: at temperature 0 it
            # will go on doing so (SmolLM2-135M repeated one call 7 times, ~7 s each under load).
            return Decision(done=True, message=message, events=events, usage=usage, notes=[
                *adapted, "the planner repeated a call that had failed: answering with what is known"]).refusing(invalid)
        if valid or invalid:
            return Decision(message=message, events=events, usage=usage, notes=adapted).refusing(invalid)
        nudged = any(isinstance(m, HumanMessage) and m.text == NUDGE for m in state.messages)
        if nudged:
            return Decision(done=True, message=message, events=events, usage=usage,
                            notes=[*adapted, NO_SUBMISSION])
        return Decision(message=message, extra_messages=[HumanMessage(NUDGE)], events=events, usage=usage,
                        notes=adapted)
