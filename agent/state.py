"""The graph's state and the prediction it produces (pydantic, so checkpoints and run records
serialise exactly)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from agent.schemas import Perception, PriorFailure, Usage
from tools.retrieval import Candidate, SearchSummary


class SearchStep(BaseModel):
    """One search in the trail: where, why, and what came back."""

    submap_id: str
    reason: str
    summary: SearchSummary


class PendingCall(BaseModel):
    """A tool call the policy decided on, to be run by the tools node."""

    id: str
    name: str
    args: dict[str, Any]
    reason: str = ""


class Event(BaseModel):
    """One streamed step: what a node did, shown live by the CLI."""

    node: str
    text: str
    tool: str | None = None
    args: dict[str, Any] | None = None


class Counters(BaseModel):
    steps: int = 0
    tool_calls: int = 0
    usage: Usage = Field(default_factory=Usage)


class ScoredCandidate(Candidate):
    score: float
    prior_term: float = 0.0
    density_term: float = 0.0
    support: int = 0


class Answer(BaseModel):
    lat: float
    lon: float
    source: str  # "prior" | "retrieval" | "llm" | ...
    confidence: float
    why: str


class Prediction(BaseModel):
    """Everything a user or a benchmark needs about one photo's answer."""

    image: str
    image_id: str
    image_sha256: str
    lat: float | None
    lon: float | None
    country: str | None = None
    country_name: str | None = None
    nearest_city: str | None = None
    confidence: float = 0.0
    source: str = "none"
    why: str = ""
    policy: str
    vlm: str
    prior: Perception | None = None
    prior_error: str | None = None
    prior_failure: PriorFailure | None = Field(None, description="why there is no prior, by kind")
    service_failure: str | None = Field(
        None, description="a model call failed at the service level (unreachable | misconfigured | exhausted)"
    )
    fallback: str = Field("none", description="'retrieval' when the user accepted answers without the model")
    trail: list[SearchStep] = Field(default_factory=list)
    top_candidates: list[ScoredCandidate] = Field(default_factory=list)
    prompts: dict[str, str] = Field(default_factory=dict, description="prompt id -> sha256")
    usage: Usage = Field(default_factory=Usage)
    tool_calls: int = 0
    steps: int = 0
    timings: dict[str, float] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)


class AgentState(BaseModel):
    image_path: str
    image_id: str
    image_sha256: str
    user_text: str | None = None
    messages: list[dict[str, Any]] = Field(default_factory=list, description="OpenAI-format planner conversation")
    perception: Perception | None = None
    prior_error: str | None = None
    prior_failure: PriorFailure | None = None
    service_failure: str | None = None
    prior_country: str | None = None
    hypotheses: list[str] = Field(default_factory=list, description="submap ids to try, best first")
    trail: list[SearchStep] = Field(default_factory=list)
    candidates: list[Candidate] = Field(default_factory=list, description="pool over all searches")
    pending: list[PendingCall] = Field(default_factory=list)
    submitted: Answer | None = None
    done: bool = Field(False, description="the policy (or a cap) ended the plan/act loop")
    counters: Counters = Field(default_factory=Counters)
    events: list[Event] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    started_at: float = 0.0
    perceive_seconds: float = 0.0
    prediction: Prediction | None = None
    chat: list[dict[str, str]] = Field(default_factory=list, description="chat transcript: role, text")
