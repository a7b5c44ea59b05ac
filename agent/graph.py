"""The LangGraph graph: perceive -> plan <-> tools -> finalize.

perceive   the VLM describes clues and states the prior (or none)
plan       the policy chooses the next tool calls, or ends; caps are enforced here
tools      the calls run; searches extend the trail and the candidate pool
finalize   geographic re-ranking and the answer, with the evidence behind it
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from langgraph.graph import END, START, StateGraph

from agent.backends.errors import FATAL_FAILURES, SERVICE_FAILURES, ModelServiceError
from agent.context import AgentContext
from agent.policies import make_policy
from agent.policies.llm import tool_message
from agent.policies.rules import CONTRADICTION_REASONS, PROBE_REASON
from agent.rerank import choose_answer, rerank
from agent.state import AgentState, Answer, Event, Prediction, SearchStep
from agent.toolbox import SubmitLocationResult, run_tool
from indices.images import file_sha256
from prompts.loader import load_prompt
from tools.base import ToolError
from tools.retrieval import SearchResult

PERCEIVE_VARS = {"max_countries": 3}


def _prior_country(state: AgentState) -> str | None:
    p = state.perception
    if p is None:
        return None
    from indices.geography import country_at, lookup_country

    for guess in p.countries:
        iso = guess.iso2 or (lookup_country(guess.name) if guess.name else None)
        if iso:
            return iso
    return country_at(p.lat, p.lon) if p.has_point else None


def build_graph(ctx: AgentContext, checkpointer=None):
    """Compile the graph around one context (index, backend, config)."""
    policy = make_policy(ctx.config.policy)
    cfg = ctx.config

    def perceive(state: AgentState) -> dict[str, Any]:
        t = time.perf_counter()
        prompt = load_prompt(cfg.perceive_prompt)
        outcome = ctx.backend.perceive(ctx.image(state.image_path, state.image_sha256),
                                       prompt.render(**PERCEIVE_VARS), image_id=state.image_id,
                                       deadline=cfg.caps.model_deadline(state.started_at))
        if outcome.failure in FATAL_FAILURES and cfg.fallback == "none":
            raise ModelServiceError(service_message(ctx.backend.spec, outcome.error))
        perception = outcome.perception
        service = outcome.failure if outcome.failure in SERVICE_FAILURES else None
        update: dict[str, Any] = {"perception": perception, "prior_error": outcome.error,
                                  "prior_failure": outcome.failure, "service_failure": service,
                                  "perceive_seconds": time.perf_counter() - t}
        counters = state.counters.model_copy(update={"usage": state.counters.usage + outcome.usage})
        update["counters"] = counters
        draft = state.model_copy(update=update)
        country = _prior_country(draft)
        if perception is not None and cfg.prior_level == "country":
            # The paper's setting: only the prior's country is used, not its point.
            perception = perception.model_copy(update={"lat": None, "lon": None})
            draft = draft.model_copy(update={"perception": perception})
            update["perception"] = perception
        update["prior_country"] = country
        draft = draft.model_copy(update={"prior_country": country})
        update.update(policy.start(draft, ctx))
        if perception is None:
            text = f"no prior ({outcome.error})" if outcome.error else "no VLM: retrieval only"
        else:
            where = f"({perception.lat:.4f}, {perception.lon:.4f})" if perception.has_point else "no point"
            clues = "; ".join(c.text for c in perception.clues[:4])
            text = f"prior: {country or '?'} {where}" + (f" — {perception.rationale[:120]}" if perception.rationale else "")
            if clues:
                text += f" | clues: {clues}"
        update["events"] = [*state.events, Event(node="perceive", text=text)]
        return update

    def plan(state: AgentState) -> dict[str, Any]:
        c = state.counters
        cap = _cap_reached(state, cfg)
        if cap:
            return {"pending": [], "done": True, "notes": [*state.notes, cap],
                    "events": [*state.events, Event(node="plan", text=cap)]}
        d = policy.decide(state, ctx)
        if d.service_failure in FATAL_FAILURES and cfg.fallback == "none":
            raise ModelServiceError(service_message(ctx.backend.spec, "; ".join(d.notes)))
        counters = c.model_copy(update={"steps": c.steps + 1, "usage": c.usage + d.usage})
        events = list(d.events) + [Event(node="plan", text=call.reason or f"call {call.name}", tool=call.name,
                                         args=call.args) for call in d.calls]
        return {"pending": [] if d.done else d.calls, "done": d.done, "counters": counters,
                "messages": [*state.messages, *d.messages], "notes": [*state.notes, *d.notes],
                "events": [*state.events, *events], "submitted": d.submitted or state.submitted,
                "service_failure": state.service_failure or d.service_failure}

    def tools(state: AgentState) -> dict[str, Any]:
        trail, pool, messages = list(state.trail), list(state.candidates), list(state.messages)
        events, submitted = list(state.events), state.submitted
        n = state.counters.tool_calls
        prior = _prior_args(state)
        for call in state.pending:
            if n >= cfg.caps.max_tool_calls:
                result = ToolError(error="tool-call cap reached; submit your best answer now")
            elif "__invalid__" in call.args:
                result = ToolError(error=call.args["__invalid__"])
            else:
                result = run_tool(ctx, call.name, call.args, state.image_path, state.image_sha256,
                                  prior if call.name == "search_submap" else None, state.image_id)
                n += 1
            if isinstance(result, SearchResult):
                trail.append(SearchStep(submap_id=result.summary.submap.id, reason=call.reason or "planner",
                                        summary=result.summary))
                if call.reason != PROBE_REASON:
                    pool.extend(result.candidates)
                s = result.summary
                text = (f"{s.submap.name}: {s.n_candidates} matches, best {s.best_similarity}, countries "
                        f"{dict(list(s.countries.items())[:4])}")
            elif isinstance(result, SubmitLocationResult):
                a = call.args
                submitted = Answer(lat=result.lat, lon=result.lon, source="llm",
                                   confidence=float(a.get("confidence", 0.5)), why=str(a.get("evidence", ""))[:500])
                text = f"submitted ({result.lat:.4f}, {result.lon:.4f})"
            elif isinstance(result, ToolError):
                text = f"error: {result.error}"
            else:
                text = result.model_dump_json(exclude_none=True)[:160]
            events.append(Event(node="tools", text=text, tool=call.name))
            if call.id.startswith("rules-"):
                continue
            messages.append(tool_message(call.id, result))
        counters = state.counters.model_copy(update={"tool_calls": n})
        return {"trail": trail, "candidates": pool, "messages": messages, "events": events, "pending": [],
                "submitted": submitted, "counters": counters}

    def finalize(state: AgentState) -> dict[str, Any]:
        scored = rerank(state.candidates, state.perception, state.prior_country, cfg)
        contradicted = any(s.reason.startswith(CONTRADICTION_REASONS) for s in state.trail)
        answer = state.submitted or choose_answer(scored, state.perception, state.prior_country, cfg, contradicted)
        pred = _prediction(state, ctx, answer, scored)
        where = "no answer" if answer is None else f"({answer.lat:.4f}, {answer.lon:.4f}) via {answer.source}"
        return {"prediction": pred, "events": [*state.events, Event(node="finalize", text=f"answer: {where}")]}

    def after_plan(state: AgentState) -> str:
        if state.pending:
            return "tools"
        return "finalize" if state.done else "plan"  # e.g. the model was nudged to call a tool

    def after_tools(state: AgentState) -> str:
        return "finalize" if state.submitted else "plan"

    g = StateGraph(AgentState)
    g.add_node("perceive", perceive)
    g.add_node("plan", plan)
    g.add_node("tools", tools)
    g.add_node("finalize", finalize)
    g.add_edge(START, "perceive")
    g.add_edge("perceive", "plan")
    g.add_conditional_edges("plan", after_plan, {"tools": "tools", "plan": "plan", "finalize": "finalize"})
    g.add_conditional_edges("tools", after_tools, {"plan": "plan", "finalize": "finalize"})
    g.add_edge("finalize", END)
    return g.compile(checkpointer=checkpointer)


def service_message(spec: str, error: str | None) -> str:
    """One line for a model that cannot be used: what failed, why, and the two ways out."""
    return (f"the model {spec} cannot be used: {error or 'unknown failure'} "
            "(or pass --fallback retrieval to answer from retrieval alone)")


def _cap_reached(state: AgentState, cfg) -> str | None:
    c, caps = state.counters, cfg.caps
    if c.steps >= caps.max_steps:
        return f"step cap ({caps.max_steps}) reached: answering with what is known"
    if c.tool_calls >= caps.max_tool_calls:
        return f"tool-call cap ({caps.max_tool_calls}) reached: answering with what is known"
    if c.usage.model_calls >= caps.max_model_calls:
        return f"model-call cap ({caps.max_model_calls}) reached: answering with what is known"
    if time.time() - state.started_at > caps.max_seconds:
        return f"time cap ({caps.max_seconds:g} s) reached: answering with what is known"
    return None


def _prior_args(state: AgentState) -> dict[str, Any]:
    p = state.perception
    out: dict[str, Any] = {}
    if p is not None and p.has_point:
        out.update(prior_lat=p.lat, prior_lon=p.lon)
    if state.prior_country:
        out["prior_country"] = state.prior_country
    return out


def _prediction(state: AgentState, ctx: AgentContext, answer: Answer | None, scored) -> Prediction:
    from tools.gazetteer import ReverseGeocodeArgs, reverse_geocode

    country = name = city = None
    if answer is not None:
        rg = reverse_geocode(ReverseGeocodeArgs(lat=answer.lat, lon=answer.lon))
        if not isinstance(rg, ToolError):
            country, name, city = rg.country, rg.country_name, rg.nearest_city
    cfg = ctx.config
    prompts = {cfg.perceive_prompt: load_prompt(cfg.perceive_prompt).sha256}
    if cfg.policy == "llm":
        prompts[cfg.plan_prompt] = load_prompt(cfg.plan_prompt).sha256
    total = time.time() - state.started_at
    return Prediction(
        image=state.image_path, image_id=state.image_id, image_sha256=state.image_sha256,
        lat=None if answer is None else answer.lat, lon=None if answer is None else answer.lon,
        country=country, country_name=name, nearest_city=city,
        confidence=0.0 if answer is None else answer.confidence,
        source="none" if answer is None else answer.source, why="" if answer is None else answer.why,
        policy=cfg.policy, vlm=ctx.backend.spec, prior=state.perception, prior_error=state.prior_error,
        prior_failure=state.prior_failure, service_failure=state.service_failure, fallback=cfg.fallback,
        trail=state.trail, top_candidates=scored[:5], prompts=prompts, usage=state.counters.usage,
        tool_calls=state.counters.tool_calls, steps=state.counters.steps,
        timings={"perceive_s": round(state.perceive_seconds, 4), "total_s": round(total, 4),
                 "agent_s": round(total - state.perceive_seconds, 4)},
        notes=state.notes,
    )


def initial_state(image_path: str | Path, image_id: str | None = None, user_text: str | None = None) -> AgentState:
    path = Path(image_path)
    return AgentState(image_path=str(path), image_id=image_id or path.name, image_sha256=file_sha256(path),
                      user_text=user_text, started_at=time.time())


def locate(
    ctx: AgentContext,
    image_path: str | Path,
    image_id: str | None = None,
    user_text: str | None = None,
    on_event: Callable[[Event], None] | None = None,
    graph=None,
    thread_id: str | None = None,
) -> Prediction:
    """Run the graph on one photo; ``on_event`` sees every step as it happens."""
    from indices.images import load_image

    load_image(image_path)  # a clear ImageLoadError before any model is called
    graph = graph or build_graph(ctx)
    state = initial_state(image_path, image_id, user_text)
    config: dict[str, Any] = {"recursion_limit": 4 * ctx.config.caps.max_steps + 10}
    if thread_id:
        config["configurable"] = {"thread_id": thread_id}
    seen = 0
    final: dict[str, Any] = {}
    for chunk in graph.stream(state, config, stream_mode="values"):
        final = chunk
        events = chunk.get("events", []) if isinstance(chunk, dict) else chunk.events
        for ev in events[seen:]:
            if on_event is not None:
                on_event(ev if isinstance(ev, Event) else Event.model_validate(ev))
        seen = len(events)
    pred = final.get("prediction") if isinstance(final, dict) else final.prediction
    if pred is None:
        raise RuntimeError("the agent ended without a prediction")
    return pred if isinstance(pred, Prediction) else Prediction.model_validate(pred)
