"""The graph's state and the prediction it produces (pydantic, so checkpoints and run records
serialise exactly).

Lists that grow during a run (the planner conversation, the search trail, the candidate pool,
notes, counters) carry LangGraph reducers, so a node returns only what it adds and never copies
whole lists. Progress events are not state: nodes and tools emit them on LangGraph's ``custom``
stream (see ``agent.graph.emit``).
"""

from __future__ import annotations

import operator
from typing import Annotated, Any, Literal

from langchain_core.messages import AnyMessage
from langgraph.graph import add_messages
from langgraph.managed import RemainingSteps
from pydantic import BaseModel, Field

from geoguide.agent.schemas import Perception, PriorFailure, Usage
from geoguide.tools.retrieval import Candidate, SearchSummary

# Why a search was made. The rules policy reads these; the search tool pools every search's
# candidates except a probe's, and ``finalize`` treats ``contradiction`` searches as licence to move far.
Purpose = Literal["hypothesis", "probe", "widen", "switch", "no_prior", "planner", "user"]


class SearchIntent(BaseModel):
    """What a search tool call is for, keyed by its tool-call id in ``AgentState.intents``."""

    purpose: Purpose = "planner"
    reason: str = ""
    contradiction: bool = Field(False, description="made because strong matches elsewhere contradict the prior")


class SearchStep(BaseModel):
    """One search in the trail: where, why, and what came back."""

    submap_id: str
    reason: str
    summary: SearchSummary
    purpose: Purpose = "planner"
    contradiction: bool = False


class Event(BaseModel):
    """One streamed step: what a node did, shown live by the CLI (sent on the ``custom`` stream)."""

    node: str
    text: str
    tool: str | None = None
    args: dict[str, Any] | None = None


class ScoredCandidate(Candidate):
    score: float
    prior_term: float = 0.0
    density_term: float = 0.0
    support: int = 0


class Answer(BaseModel):
    lat: float
    lon: float
    source: str  # "prior" | "retrieval" | "llm" | ...
    confidence: float = Field(description="P(within 25 km of the truth), calibrated (agent.trust); 0 = unknown")
    why: str
    p_within_km: dict[str, float] = Field(default_factory=dict, description="P(within 1/25/200/750/2500 km)")
    probability_source: str | None = Field(None, description="map | profile | stated | default (agent.trust)")


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
    confidence: float = Field(0.0, description="P(within 25 km of the truth), calibrated (agent.trust); 0 = unknown")
    p_within_km: dict[str, float] = Field(default_factory=dict, description="P(the answer within 1/25/200/750/2500 "
                                          "km of the truth); empty when unknown")
    probability_source: str | None = Field(None, description="where those probabilities come from: map (the index's "
                                           "calibration), profile, stated (the model's uncertainty) or default")
    radius_km: float | None = Field(None, description="a radius around the answer that holds the truth with "
                                    "radius_coverage, from a calibration profile (--calibration); None without one")
    radius_coverage: float | None = Field(None, description="the profile's stated coverage of radius_km (e.g. 0.9)")
    source: str = "none"
    why: str = ""
    policy: str
    vlm: str
    planner: str | None = Field(None, description="the planner's backend spec when it differs from the VLM's")
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

    def model_failure(self) -> str | None:
        """Why this answer is not what was asked for: the model could not be used and the user did
        not accept a retrieval-only answer (``--fallback retrieval``); None when it is."""
        if self.service_failure and self.fallback == "none":
            return f"the model failed ({self.service_failure}): {self.prior_error or '; '.join(self.notes)}"
        return None


def _merge(left: dict[str, SearchIntent], right: dict[str, SearchIntent]) -> dict[str, SearchIntent]:
    return {**left, **right}


class AgentState(BaseModel):
    """One photo's run. Checkpoints hold the image's path and hash, never its pixels."""

    image_path: str
    image_id: str
    image_sha256: str
    user_text: str | None = None
    messages: Annotated[list[AnyMessage], add_messages] = Field(
        default_factory=list, description="the planner conversation: the policy's tool calls and their results"
    )
    perception: Perception | None = None
    prior_error: str | None = None
    prior_failure: PriorFailure | None = None
    service_failure: str | None = None
    prior_country: str | None = Field(None, description="derived once from the prior, in perceive")
    hypotheses: list[str] = Field(default_factory=list, description="submap ids to try, best first")
    intents: Annotated[dict[str, SearchIntent], _merge] = Field(default_factory=dict)
    trail: Annotated[list[SearchStep], operator.add] = Field(default_factory=list)
    candidates: Annotated[list[Candidate], operator.add] = Field(
        default_factory=list, description="pool over all searches but the probe"
    )
    submitted: Answer | None = None
    planner_down: bool = Field(False, description="the planner failed: the rules pipeline finishes the photo")
    done: bool = Field(False, description="the policy (or a cap) ended the plan/act loop")
    steps: Annotated[int, operator.add] = 0
    tool_calls: Annotated[int, operator.add] = 0
    usage: Annotated[Usage, operator.add] = Field(default_factory=Usage)
    notes: Annotated[list[str], operator.add] = Field(default_factory=list)
    started_at: float = 0.0
    perceive_seconds: float = 0.0
    prediction: Prediction | None = None
    chat: list[dict[str, str]] = Field(default_factory=list, description="chat transcript: role, text")
    question: str | None = Field(None, description="a follow-up question for the follow_up node")
    reply: str | None = Field(None, description="the follow_up node's answer to it")
    remaining_steps: RemainingSteps = 25
