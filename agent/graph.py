"""The LangGraph graph: perceive -> plan <-> tools -> finalize, compiled once per process.

perceive   the VLM describes clues and states the prior (or none); the prior's country is derived here, once
plan       the policy's next tool calls (an ``AIMessage``), or the end; caps are enforced here
tools      LangGraph's ``ToolNode`` runs the calls; searches extend the trail and the pool via reducers
finalize   the one answer function (``agent.rerank.answer``), with the evidence behind it
follow_up  a chat question on a located photo's thread ("why not Portugal?", "look near Lyon")

The run's objects (index, backends, config) are the graph's context (``context_schema``), so one
compiled graph serves every photo, the CLI, the chat and the eval runner. Progress goes out on
LangGraph's ``custom`` stream; ``locate`` forwards it to ``on_event``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from langchain_core.messages import AIMessage
from langgraph.config import get_stream_writer
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime

from geoguide.agent.backends.errors import FATAL_FAILURES, SERVICE_FAILURES, ModelServiceError
from geoguide.agent.config import Caps
from geoguide.agent.context import AgentContext
from geoguide.agent.policies import make_policy
from geoguide.agent.policies.base import Decision, refused_call
from geoguide.agent.rerank import Evidence, answer
from geoguide.agent.state import AgentState, Answer, Event, Prediction
from geoguide.agent.toolbox import tool_node
from geoguide.core.images import file_sha256
from geoguide.geo import prior_country
from geoguide.indices.submaps import WHOLE_MAP
from geoguide.prompts.loader import load_prompt
from geoguide.tools.base import ToolError

PERCEIVE_VARS = {"max_countries": 3}
STEPS_PER_PLAN = 2  # a plan step and its tools step, in LangGraph's recursion count


def emit(event: Event) -> None:
    """Send a progress event on the ``custom`` stream (a no-op outside a streamed run)."""
    get_stream_writer()(event)


def service_message(spec: str, error: str | None) -> str:
    """One line for a model that cannot be used: what failed, why, and the two ways out."""
    return (f"the model {spec} cannot be used: {error or 'unknown failure'} "
            "(or pass --fallback retrieval to answer from retrieval alone)")


def perceive(state: AgentState, runtime: Runtime[AgentContext]) -> dict[str, Any]:
    ctx = runtime.context
    cfg = ctx.config
    t = time.perf_counter()
    prompt = load_prompt(cfg.perceive_prompt)
    outcome = ctx.backend.perceive(ctx.image(state.image_path, state.image_sha256), prompt.render(**PERCEIVE_VARS),
                                   image_id=state.image_id, deadline=cfg.caps.model_deadline(state.started_at))
    if outcome.failure in FATAL_FAILURES and cfg.fallback == "none":
        raise ModelServiceError(service_message(ctx.backend.spec, outcome.error))
    perception = outcome.perception
    country = prior_country(perception)  # derived once per photo, before a country-level prior drops its point
    if perception is not None and cfg.prior_level == "country":
        # The paper's setting: only the prior's country is used, not its point.
        perception = perception.model_copy(update={"lat": None, "lon": None})
    update: dict[str, Any] = {
        "perception": perception, "prior_error": outcome.error, "prior_failure": outcome.failure,
        "service_failure": outcome.failure if outcome.failure in SERVICE_FAILURES else None,
        "perceive_seconds": time.perf_counter() - t, "usage": outcome.usage, "prior_country": country,
    }
    update.update(make_policy(cfg.policy).start(state.model_copy(update=update), ctx))
    if perception is None:
        text = f"no prior ({outcome.error})" if outcome.error else "no VLM: retrieval only"
    else:
        where = f"({perception.lat:.4f}, {perception.lon:.4f})" if perception.has_point else "no point"
        clues = "; ".join(c.text for c in perception.clues[:4])
        text = f"prior: {country or '?'} {where}" + (f" — {perception.rationale[:120]}" if perception.rationale else "")
        if clues:
            text += f" | clues: {clues}"
    emit(Event(node="perceive", text=text))
    return update


def plan(state: AgentState, runtime: Runtime[AgentContext]) -> dict[str, Any]:
    ctx = runtime.context
    cap = _cap_reached(state, ctx)
    if cap:
        emit(Event(node="plan", text=cap))
        return {"done": True, "notes": [cap]}
    # What happens after a failed planner (retrieval takes over) is the policy's business; this node
    # only records that it failed, so the policy can tell on its next step.
    d = within_tool_budget(make_policy(ctx.config.policy).decide(state, ctx), ctx.config.caps, state.tool_calls)
    if d.service_failure in FATAL_FAILURES and ctx.config.fallback == "none":
        planner = ctx.planner_backend
        raise ModelServiceError(service_message(planner.spec if planner else ctx.backend.spec, "; ".join(d.notes)))
    update: dict[str, Any] = {"planner_down": True} if d.planner_failed else {}
    for ev in d.events:
        emit(ev)
    messages = ([d.message] if d.message is not None else []) + d.extra_messages
    return {"messages": messages, "intents": d.intents, "done": d.done, "steps": 1, "usage": d.usage,
            "notes": d.notes, "service_failure": state.service_failure or d.service_failure, **update}


def finalize(state: AgentState, runtime: Runtime[AgentContext]) -> dict[str, Any]:
    ctx = runtime.context
    from geoguide.agent.policies.rules import text_result

    read = text_result(state) if state.submitted is not None else None
    evidence = Evidence(candidates=state.candidates, perception=state.perception, prior_country=state.prior_country,
                        contradicted=any(s.contradiction for s in state.trail), submitted=state.submitted,
                        searches=len(state.trail), calibration=ctx.calibration(), profile=ctx.profile,
                        scope="map" if any(s.submap_id == WHOLE_MAP for s in state.trail if s.purpose != "probe")
                        else "area",
                        text_countries={c.iso2: c.probability for c in read.countries} if read and read.legible else {})
    chosen, scored = answer(evidence, ctx.config)
    pred = _prediction(state, ctx, chosen, scored)
    if ctx.profile is not None and pred.p_within_km:
        from geoguide.agent.profile import with_profile

        pred = with_profile(pred, ctx.profile)
    where = "no answer" if chosen is None else f"({chosen.lat:.4f}, {chosen.lon:.4f}) via {chosen.source}"
    emit(Event(node="finalize", text=f"answer: {where}"))
    return {"prediction": pred}


def follow_up(state: AgentState, runtime: Runtime[AgentContext]) -> dict[str, Any]:
    """A question about the photo already located on this thread: answered from the trail, the
    candidates and the prior (searching again near a place the user names), for every policy."""
    from geoguide.agent.followup import answer_follow_up

    text = (state.question or "").strip()
    reply, new = answer_follow_up(runtime.context, state, text)
    emit(Event(node="follow_up", text=reply[:160]))
    return {"question": None, "reply": reply, "prediction": new.prediction,
            "trail": new.trail[len(state.trail):], "candidates": new.candidates[len(state.candidates):],
            "chat": [*state.chat, {"role": "user", "text": text}, {"role": "assistant", "text": reply}]}


def entry(state: AgentState) -> str:
    """A new photo is perceived; a question on a located photo's thread goes to ``follow_up``."""
    return "follow_up" if state.question and state.prediction is not None else "perceive"


def after_plan(state: AgentState) -> str:
    # The policy's turn is the latest AIMessage; error messages for its refused calls may follow it.
    last = next((m for m in reversed(state.messages) if isinstance(m, AIMessage)), None)
    if isinstance(last, AIMessage) and last.tool_calls and not state.done:
        return "tools"
    return "finalize" if state.done else "plan"  # e.g. the model was nudged, or its calls were all invalid


def after_tools(state: AgentState) -> str:
    return "finalize" if state.submitted else "plan"


def build_graph(checkpointer=None):
    """The agent graph, compiled; the run's objects come in as its context at invocation."""
    g = StateGraph(AgentState, context_schema=AgentContext)
    g.add_node("perceive", perceive)
    g.add_node("plan", plan)
    g.add_node("tools", tool_node())
    g.add_node("finalize", finalize)
    g.add_node("follow_up", follow_up)
    g.add_conditional_edges(START, entry, {"perceive": "perceive", "follow_up": "follow_up"})
    g.add_edge("follow_up", END)
    g.add_edge("perceive", "plan")
    g.add_conditional_edges("plan", after_plan, {"tools": "tools", "plan": "plan", "finalize": "finalize"})
    g.add_conditional_edges("tools", after_tools, {"plan": "plan", "finalize": "finalize"})
    g.add_edge("finalize", END)
    return g.compile(checkpointer=checkpointer)


# The process's one compiled graph (no checkpointer): ``locate``, the eval runner and
# ``langgraph.json`` (``./agent/graph.py:graph``) use it; chat sessions compile one with their checkpointer.
graph = build_graph()


def compiled_graph():
    return graph


def within_tool_budget(d: Decision, caps: Caps, used: int) -> Decision:
    """The turn held to the tool-call cap, whatever the policy: calls beyond what is left are refused
    here (the model reads why and can submit), so no tool has to count and no policy can overrun."""
    left = caps.tool_calls_left(used)
    if d.message is None or len(d.message.tool_calls) <= left:
        return d
    over = d.message.tool_calls[left:]
    # The policy's "call X" events for the calls refused here give way to the refusals.
    events = [e for e in d.events if not any(e.text == f"call {c['name']}" and e.args == c["args"] for c in over)]
    kept = d.model_copy(update={"message": d.message.model_copy(update={"tool_calls": d.message.tool_calls[:left]}),
                                "events": events})
    error = f"tool-call cap ({caps.max_tool_calls}) reached; submit your best answer now"
    return kept.refusing([refused_call(c, error) for c in over])


def _cap_reached(state: AgentState, ctx: AgentContext) -> str | None:
    caps = ctx.config.caps
    if state.steps >= caps.max_steps:
        return f"step cap ({caps.max_steps}) reached: answering with what is known"
    if state.remaining_steps <= STEPS_PER_PLAN + 1:  # LangGraph's own budget, the last guard
        return "recursion budget spent: answering with what is known"
    if caps.tool_calls_left(state.tool_calls) == 0:
        return f"tool-call cap ({caps.max_tool_calls}) reached: answering with what is known"
    if state.usage.model_calls >= caps.max_model_calls:
        return f"model-call cap ({caps.max_model_calls}) reached: answering with what is known"
    if time.time() - state.started_at > caps.max_seconds:
        return f"time cap ({caps.max_seconds:g} s) reached: answering with what is known"
    return None


def _prediction(state: AgentState, ctx: AgentContext, chosen: Answer | None, scored) -> Prediction:
    from geoguide.tools.gazetteer import ReverseGeocodeArgs, reverse_geocode

    country = name = city = None
    if chosen is not None:
        rg = reverse_geocode(ReverseGeocodeArgs(lat=chosen.lat, lon=chosen.lon))
        if not isinstance(rg, ToolError):
            country, name, city = rg.country, rg.country_name, rg.nearest_city
    cfg = ctx.config
    prompts = {cfg.perceive_prompt: load_prompt(cfg.perceive_prompt).sha256}
    if cfg.policy == "llm":
        prompts[cfg.plan_prompt] = load_prompt(cfg.plan_prompt).sha256
    total = time.time() - state.started_at
    return Prediction(
        image=state.image_path, image_id=state.image_id, image_sha256=state.image_sha256,
        lat=None if chosen is None else chosen.lat, lon=None if chosen is None else chosen.lon,
        country=country, country_name=name, nearest_city=city,
        confidence=0.0 if chosen is None else chosen.confidence,
        p_within_km={} if chosen is None else chosen.p_within_km,
        probability_source=None if chosen is None else chosen.probability_source,
        source="none" if chosen is None else chosen.source, why="" if chosen is None else chosen.why,
        policy=cfg.policy, vlm=ctx.backend.spec,
        planner=ctx.planner.spec if ctx.planner is not None and ctx.planner is not ctx.backend else None,
        prior=state.perception, prior_error=state.prior_error,
        prior_failure=state.prior_failure, service_failure=state.service_failure, fallback=cfg.fallback,
        trail=state.trail, top_candidates=scored[:5], prompts=prompts, usage=state.usage,
        tool_calls=state.tool_calls, steps=state.steps,
        timings={"perceive_s": round(state.perceive_seconds, 4), "total_s": round(total, 4),
                 "agent_s": round(total - state.perceive_seconds, 4)},
        notes=state.notes,
    )


def initial_state(image_path: str | Path, image_id: str | None = None, user_text: str | None = None,
                  sha256: str | None = None) -> AgentState:
    path = Path(image_path)
    return AgentState(image_path=str(path), image_id=image_id or path.name, image_sha256=sha256 or file_sha256(path),
                      user_text=user_text, started_at=time.time())


def run_config(ctx: AgentContext, thread_id: str | None = None) -> dict[str, Any]:
    """LangGraph's run config: a recursion limit that fits the step cap, and the thread if any."""
    config: dict[str, Any] = {"recursion_limit": STEPS_PER_PLAN * ctx.config.caps.max_steps + 6}
    if thread_id:
        config["configurable"] = {"thread_id": thread_id}
    return config


def locate(
    ctx: AgentContext,
    image_path: str | Path,
    image_id: str | None = None,
    user_text: str | None = None,
    on_event: Callable[[Event], None] | None = None,
    graph=None,
    thread_id: str | None = None,
) -> Prediction:
    """Run the graph on one photo; ``on_event`` sees every step as it happens.

    The photo is decoded once, here, before any model is called (a clear ``ImageLoadError`` for a
    file that is not one): the context caches it by hash, and ``perceive`` reads it from there."""
    from geoguide.core.images import load_image

    try:
        sha = file_sha256(Path(image_path))
    except OSError:
        load_image(image_path)  # a missing or unreadable file: the loader's one-line error
        raise
    ctx.image(str(Path(image_path)), sha)
    graph = graph or compiled_graph()
    final: Any = None
    # The custom stream makes LangGraph run nodes on a worker thread (so events flow while a node
    # works); a run nobody watches (the eval runner) stays on the calling thread, where Ctrl-C
    # interrupts a blocked model call at once instead of after its timeout.
    modes = ["custom", "values"] if on_event is not None else ["values"]
    for mode, chunk in graph.stream(initial_state(image_path, image_id, user_text, sha), run_config(ctx, thread_id),
                                    context=ctx, stream_mode=modes):
        if mode == "custom":
            on_event(chunk if isinstance(chunk, Event) else Event.model_validate(chunk))
        else:
            final = chunk
    pred = final.get("prediction") if isinstance(final, dict) else getattr(final, "prediction", None)
    if pred is None:
        raise RuntimeError("the agent ended without a prediction")
    return pred if isinstance(pred, Prediction) else Prediction.model_validate(pred)
