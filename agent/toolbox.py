"""The tools as the agent sees them: names, JSON schemas for the model, and one dispatcher.

Every call is validated against its pydantic model; anything wrong (bad JSON, unknown submap,
latitude 200, an unknown tool) comes back as a ``ToolError`` that is shown to the model, which
can correct itself. The run's leakage rules (excluded photographers and ids) are imposed here,
so no policy or model can search around them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from agent.context import AgentContext
from tools import gazetteer, retrieval
from tools.base import ToolError, parse_args


class SubmitLocationArgs(BaseModel):
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    confidence: float = Field(0.5, ge=0, le=1)
    evidence: str = Field("", description="reference ids, scores and clues that support the answer")


class SubmitLocationResult(BaseModel):
    ok: Literal[True] = True
    lat: float
    lon: float


class _SearchToolArgs(BaseModel):
    """What the model may set for a search (the rest is filled in by the run)."""

    submap_id: str = Field(description="e.g. 'country:FR', 'kmeans-100:37', 'radius:45.76,4.84,50', 'continent:Europe', 'global'")
    k: int = Field(20, ge=1, le=100)


TOOL_DOCS: dict[str, tuple[type[BaseModel], str]] = {
    "list_submaps": (retrieval.ListSubmapsArgs, "List submaps of a scheme ('country' or 'kmeans'), optionally near a point or containing a country."),
    "search_submap": (_SearchToolArgs, "Visual place recognition of the photo inside one submap: best-matching geotagged references and a summary."),
    "widen": (retrieval.WidenArgs, "The next larger search area around a submap (neighbours, larger radius, continent, globe)."),
    "geocode": (gazetteer.GeocodeArgs, "Place name -> coordinates (offline gazetteer)."),
    "reverse_geocode": (gazetteer.ReverseGeocodeArgs, "Coordinates -> country and nearest city."),
    "submit_location": (SubmitLocationArgs, "Submit the final answer with its evidence. Call exactly once, last."),
}


def openai_tools() -> list[dict[str, Any]]:
    """Tool definitions in the OpenAI function-calling format."""
    out = []
    for name, (model, doc) in TOOL_DOCS.items():
        schema = model.model_json_schema()
        schema.pop("title", None)
        out.append({"type": "function", "function": {"name": name, "description": doc, "parameters": schema}})
    return out


def run_tool(ctx: AgentContext, name: str, args: dict[str, Any], image_path: str, image_sha: str,
             prior: dict[str, Any] | None = None, image_id: str | None = None):
    """Run one tool call; returns its result model or a ``ToolError``. Never raises for bad input."""
    if name not in TOOL_DOCS:
        return ToolError(error=f"unknown tool {name!r}; available: {', '.join(TOOL_DOCS)}")
    parsed = parse_args(TOOL_DOCS[name][0], args, name)
    if isinstance(parsed, ToolError):
        return parsed
    try:
        if name == "search_submap":
            search = retrieval.SearchArgs(
                submap_id=parsed.submap_id, k=parsed.k,
                exclude_authors=ctx.config.exclude_authors, exclude_ids=ctx.config.exclude_ids, **(prior or {}),
            )
            return retrieval.search_submap(ctx.index, ctx.query_vector(image_path, image_sha, image_id), search)
        if name == "submit_location":
            return SubmitLocationResult(lat=parsed.lat, lon=parsed.lon)
        return TOOL_FUNCTIONS[name](ctx, parsed)
    except ValueError as e:
        return ToolError(error=f"{name}: {e}")


TOOL_FUNCTIONS = {
    "list_submaps": lambda ctx, a: retrieval.list_submaps(ctx.index, a),
    "widen": lambda ctx, a: retrieval.widen(ctx.index, a),
    "geocode": lambda ctx, a: gazetteer.geocode(a),
    "reverse_geocode": lambda ctx, a: gazetteer.reverse_geocode(a),
}
