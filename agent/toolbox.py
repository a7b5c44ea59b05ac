"""The tools as the agent sees them: LangChain tools built from the pydantic argument models, run
by LangGraph's ``ToolNode`` for every policy.

Each tool reads the run's objects from the graph context (``ToolRuntime.context``: the index, the
config) and the photo from the state, and returns a ``Command`` whose update goes through the
state's reducers: a search appends its step to the trail and its candidates to the pool. Anything
wrong (bad arguments, an unknown submap, latitude 200, a spent tool budget) comes back to the model
as an error ``ToolMessage`` it can act on. The run's leakage rules (excluded photographers and ids)
are imposed here, so no policy or model can search around them.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Callable
from typing import Any, Literal, NamedTuple, TypeVar

from langchain_core.messages import ToolMessage
from langchain_core.tools import BaseTool, StructuredTool
from langgraph.prebuilt import ToolNode, ToolRuntime
from langgraph.prebuilt.tool_node import ToolInvocationError
from langgraph.types import Command
from pydantic import BaseModel, Field

from geoguide.agent.context import AgentContext
from geoguide.agent.state import AgentState, Answer, Event, SearchIntent, SearchStep
from geoguide.core.registry import Registry
from geoguide.core.validation import describe_validation
from geoguide.tools import gazetteer, read_text, retrieval
from geoguide.tools.base import ToolError


class SubmitLocationArgs(BaseModel):
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    confidence: float = Field(0.5, ge=0, le=1)
    evidence: str = Field("", description="reference ids, scores and clues that support the answer")


class SubmitLocationResult(BaseModel):
    ok: Literal[True] = True
    lat: float
    lon: float


class SearchToolArgs(BaseModel):
    """What the model may set for a search (the rest is filled in by the run)."""

    submap_id: str = Field(description="e.g. 'country:FR', 'kmeans-100:37', 'radius:45.76,4.84,50', 'continent:Europe', 'global'")
    k: int = Field(20, ge=1, le=100)


class ToolEntry(NamedTuple):
    """One tool: what the model may pass, what it is told, what runs. ``entry[0]`` and ``entry[1]``
    are the argument model and description, as ``TOOL_DOCS`` entries always were."""

    args: type[BaseModel]
    description: str
    run: Callable[..., Command]


# name -> entry, in the order the model is shown them; filled by the ``@tool`` lines below.
TOOLS: Registry[ToolEntry] = Registry("tool", key=None)
TOOL_DOCS = TOOLS  # the older name
F = TypeVar("F", bound=Callable[..., Any])


def tool(name: str, args: type[BaseModel], description: str) -> Callable[[F], F]:
    """``@tool("name", ArgsModel, "what it does")`` on a ``(...args, *, runtime) -> Command`` function."""

    def decorate(run: F) -> F:
        TOOLS.add(ToolEntry(args, description, run), name)
        return run

    return decorate


MAX_RESULT_CHARS = 6000  # what the model reads of one result; long candidate lists are trimmed to 10


def result_text(result: BaseModel) -> str:
    """A tool result as the model reads it: compact JSON, long candidate lists trimmed and put
    last, so the summary (with the calibrated ``p_within_km``) is never the part cut off."""
    data = result.model_dump(exclude_none=True)
    if "candidates" in data:
        data["candidates"] = data.pop("candidates")[:10]
    return json.dumps(data, ensure_ascii=False)[:MAX_RESULT_CHARS]


def _reply(runtime: ToolRuntime, name: str, result: BaseModel, text: str, **update: Any) -> Command:
    """The tool's message for the model, its event on the stream, and its state update (one more
    call: the plan node holds every turn to the tool-call cap, so a call that reaches a tool runs)."""
    runtime.stream_writer(Event(node="tools", text=text, tool=name))
    status = "error" if isinstance(result, ToolError) else "success"
    msg = ToolMessage(content=result_text(result), tool_call_id=runtime.tool_call_id, name=name, status=status)
    return Command(update={"messages": [msg], "tool_calls": 1, **update})


def _prior_args(state) -> dict[str, Any]:
    p = state.perception
    out: dict[str, Any] = {}
    if p is not None and p.has_point:
        out.update(prior_lat=p.lat, prior_lon=p.lon)
    if state.prior_country:
        out["prior_country"] = state.prior_country
    return out


def _simple(name: str, model: type[BaseModel], call: Callable[[AgentContext, Any], BaseModel]) -> Callable[..., Command]:
    """A tool that only reads (list_submaps, widen, geocode, reverse_geocode): result -> message."""

    def run(*, runtime: ToolRuntime, **kwargs: Any) -> Command:
        try:
            result = call(runtime.context, model.model_validate(kwargs))
        except ValueError as e:
            result = ToolError(error=f"{name}: {e}")
        text = f"error: {result.error}" if isinstance(result, ToolError) else result.model_dump_json(exclude_none=True)[:160]
        return _reply(runtime, name, result, text)

    run.__name__ = name
    return run


R = TypeVar("R", bound=Callable[[AgentContext, Any], BaseModel])


def read_tool(name: str, args: type[BaseModel], description: str) -> Callable[[R], R]:
    """``@read_tool(...)`` on a ``(ctx, args) -> result`` function: a tool that only reads, given the
    budget check, the error message and the reply by ``_simple``."""

    def decorate(call: R) -> R:
        tool(name, args, description)(_simple(name, args, call))
        return call

    return decorate


def run_search(ctx: AgentContext, state: AgentState, submap_id: str, k: int, *,
               prior: dict[str, Any] | None = None) -> retrieval.SearchResult | ToolError:
    """Search the photo of ``state`` inside ``submap_id`` under the run's leakage rules.

    The one place where ``config.exclude_authors`` and ``exclude_ids`` reach a search: the
    ``search_submap`` tool (every policy's searches) and the chat's "look near X" follow-ups both
    come through here, so nothing can search around them. ``prior`` (``prior_lat``, ``prior_lon``,
    ``prior_country``) replaces the state's prior in the agreement counts, e.g. a place the user
    named. A bad submap id or argument comes back as a ``ToolError``, not an exception.
    """
    try:
        args = retrieval.SearchArgs(submap_id=submap_id, k=k, exclude_authors=ctx.config.exclude_authors,
                                    exclude_ids=ctx.config.exclude_ids,
                                    **(_prior_args(state) if prior is None else prior))
        vector = ctx.query_vector(state.image_path, state.image_sha256, state.image_id)
        return retrieval.search_submap(ctx.index, vector, args)
    except ValueError as e:
        return ToolError(error=f"search_submap: {e}")


@tool("search_submap", SearchToolArgs,
      "Visual place recognition of the photo inside one submap: best-matching geotagged references and a summary.")
def search_submap(submap_id: str, k: int = 20, *, runtime: ToolRuntime) -> Command:
    ctx: AgentContext = runtime.context
    state = runtime.state
    intent = state.intents.get(runtime.tool_call_id) or SearchIntent(reason="planner")
    res = run_search(ctx, state, submap_id, k)
    if isinstance(res, ToolError):
        return _reply(runtime, "search_submap", res, f"error: {res.error}")
    s = res.summary
    step = SearchStep(submap_id=s.submap.id, reason=intent.reason or "planner", summary=s, purpose=intent.purpose,
                      contradiction=intent.contradiction)
    best = "none" if s.best_similarity is None else f"{s.best_similarity:.3f}"
    where = ", ".join(f"{c} {n}" for c, n in list(s.countries.items())[:4]) or "none"
    text = f"{s.submap.name}: {s.n_candidates} matches, best similarity {best}; countries {where}"
    pooled = [] if intent.purpose == "probe" else res.candidates  # the probe tests the prior; it does not answer
    return _reply(runtime, "search_submap", res, text, trail=[step], candidates=pooled)


@read_tool("widen", retrieval.WidenArgs,
           "The next larger search area around a submap (neighbours, larger radius, continent, globe).")
def widen(ctx: AgentContext, args: retrieval.WidenArgs) -> BaseModel:
    return retrieval.widen(ctx.index, args)


@read_tool("geocode", gazetteer.GeocodeArgs, "Place name -> coordinates (offline gazetteer).")
def geocode(ctx: AgentContext, args: gazetteer.GeocodeArgs) -> BaseModel:
    return gazetteer.geocode(args)


@read_tool("reverse_geocode", gazetteer.ReverseGeocodeArgs, "Coordinates -> country and nearest city.")
def reverse_geocode(ctx: AgentContext, args: gazetteer.ReverseGeocodeArgs) -> BaseModel:
    return gazetteer.reverse_geocode(args)


# Registered after the search and the gazetteer on purpose: the catalogue's order is the order a
# planner reads it in, and SmolLM2-135M took the first tool listed (list_submaps, with arguments
# such as near=[1, 1e15]) on every turn; the search belongs first.
@read_tool("list_submaps", retrieval.ListSubmapsArgs,
           "List submaps of a scheme ('country' or 'kmeans'), optionally near a point or containing a country.")
def list_submaps(ctx: AgentContext, args: retrieval.ListSubmapsArgs) -> BaseModel:
    return retrieval.list_submaps(ctx.index, args)


@tool("read_text", read_text.ReadTextArgs,
      "Read the text the photo shows (OCR of signs, shop fronts, plates): its language and the countries "
      "that write it, most likely first; or that no legible text was found.")
def read_photo_text(max_countries: int = read_text.MAX_COUNTRIES, *, runtime: ToolRuntime) -> Command:
    """OCR of the photo being located (cached per image): text, languages, ranked countries."""
    state = runtime.state
    image = runtime.context.image(state.image_path, state.image_sha256)
    where = read_text.photos_per_country(runtime.context.index)  # countries ranked where photos are taken
    res = read_text.read_text(image, state.image_sha256, max_countries=max_countries, where=where)
    if isinstance(res, ToolError):
        text = f"error: {res.error}"
    elif not res.legible:
        text = res.note
    else:
        langs = ", ".join(f"{x.name} {x.probability:.2f}" for x in res.languages[:3])
        text = f"reads {res.text[:60]!r}: {langs}; countries {', '.join(c.iso2 for c in res.countries[:5])}"
    return _reply(runtime, "read_text", res, text)


@tool("submit_location", SubmitLocationArgs, "Submit the final answer with its evidence. Call exactly once, last.")
def submit_location(lat: float, lon: float, confidence: float = 0.5, evidence: str = "", *,
                    runtime: ToolRuntime) -> Command:
    result = SubmitLocationResult(lat=lat, lon=lon)
    answer = Answer(lat=lat, lon=lon, source="llm", confidence=confidence, why=evidence[:500])
    return _reply(runtime, "submit_location", result, f"submitted ({lat:.4f}, {lon:.4f})", submitted=answer)


def tool_error_text(exc: ToolInvocationError) -> str:
    """What the model reads when its arguments do not validate: the fields and the problem.

    Annotated ``ToolInvocationError`` on purpose: ``ToolNode`` catches the types this handler
    names, so anything else raised inside a tool (a missing model, a broken index, a bug) ends
    the run loudly instead of becoming a message to the model.
    """
    from pydantic import ValidationError

    if isinstance(exc.__cause__, ValidationError):
        problems = describe_validation(exc.__cause__, whole="arguments")
        return json.dumps({"ok": False, "error": f"invalid arguments: {problems}"})
    return json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}"})


def langchain_tools() -> tuple[BaseTool, ...]:
    """Every registered tool as a LangChain tool: what ``ToolNode`` runs and, through
    ``openai_tools``, what a planner is told, so the two never disagree. Built once per set of
    registered tools (a tool registered later is built in, not silently left out)."""
    return _built(_registered())[0]


def _registered() -> tuple[str, ...]:
    return tuple(name for name, _ in TOOLS.items())  # in the order the model is shown them


@functools.cache
def _built(names: tuple[str, ...]) -> tuple[tuple[BaseTool, ...], tuple[dict[str, Any], ...]]:
    entries = {name: TOOLS.get(name) for name in names}
    tools = tuple(StructuredTool.from_function(e.run, name=name, description=e.description, args_schema=e.args)
                  for name, e in entries.items())
    return tools, tuple(_function_tool(tool, entries[tool.name].args) for tool in tools)


def _function_tool(tool: BaseTool, args: type[BaseModel]) -> dict[str, Any]:
    """A LangChain tool in the OpenAI function-calling format, its parameters the argument model's
    own JSON schema (less the model's title). Not ``convert_to_openai_tool``: that rebuilds the
    schema from the fields and drops what a model states beyond them, e.g. ``reverse_geocode``'s
    latitude and longitude ranges, which the model must read but the tool checks itself
    (``json_schema_extra``); the planner's requests, and so the response cache's keys, stay as they were."""
    schema = args.model_json_schema()
    schema.pop("title", None)
    return {"type": "function", "function": {"name": tool.name, "description": tool.description,
                                             "parameters": schema}}


def openai_tools() -> list[dict[str, Any]]:
    """The tools in the OpenAI function-calling format (what the ``llm`` policy binds to its planner):
    4,494 characters of JSON for the seven tools. Built once with the LangChain tools; each caller
    gets its own copy, so no request can alter another's."""
    return copy.deepcopy(list(_built(_registered())[1]))


def tool_node() -> ToolNode:
    """LangGraph's own tool runner over every tool; argument errors go back to the model."""
    return ToolNode(langchain_tools(), handle_tool_errors=tool_error_text)
