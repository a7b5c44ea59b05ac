"""The agent's configuration: one typed object, every field documented, recorded with each run."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class Caps(BaseModel):
    """Hard limits; hitting one finalizes with what is known and says so in the prediction."""

    max_steps: int = Field(12, ge=1, description="plan/act iterations")
    max_tool_calls: int = Field(12, ge=1, description="tool calls of any kind")
    max_model_calls: int = Field(10, ge=1, description="VLM/LLM completions, repairs included")
    max_seconds: float = Field(180.0, gt=0, description="wall time per photo")
    retrieval_reserve_s: float = Field(
        10.0, ge=0, description="time kept back from model calls (at most a quarter of max_seconds) so that a "
        "hanging model still leaves time to answer from retrieval within max_seconds",
    )

    def model_deadline(self, started_at: float) -> float:
        """The ``time.time()`` instant after which no model call may run for this photo."""
        return started_at + self.max_seconds - min(self.retrieval_reserve_s, 0.25 * self.max_seconds)


class RerankConfig(BaseModel):
    """Geographic re-ranking of the candidate pool (switch off for the paper's ablation)."""

    enabled: bool = True
    prior_weight: float = Field(0.5, ge=0, description="weight of proximity to the prior's point")
    prior_scale_km: float = Field(300.0, gt=0, description="e-folding distance of the prior kernel")
    density_weight: float = Field(0.25, ge=0, description="weight of support by nearby candidates")
    density_km: float = Field(25.0, gt=0, description="candidates closer than this support each other")


class OverrideConfig(BaseModel):
    """When retrieval may replace the VLM's own point (measured on the shared split, see eval/RESULTS.md).

    The recorded VLM points are strong (13.6% within 1 km); snapping them to the best visual
    match without a confidence test loses street-level accuracy. Retrieval wins only when its
    evidence is strong: enough candidates agreeing on one spot, matching well, near the prior.
    """

    enabled: bool = True
    min_support: int = Field(2, ge=1, description="candidates within density_km of the answer")
    min_similarity: float = Field(0.80, description="similarity of the best supporting candidate")
    max_km_from_prior: float = Field(100.0, gt=0, description="retrieval may move the prior at most this far")


class NoPriorConfig(BaseModel):
    """What the rules policy does for a photo the VLM gave no usable prior (139 of the shared
    split's 1,630), measured in eval/RESULTS.md ("Photos without a prior")."""

    read_text: bool = Field(True, description="read the photo's text first and search the countries that write "
                            "its language")
    min_language_probability: float = Field(0.5, ge=0, le=1, description="the text's top language must be this "
                                            "likely for its countries to be searched")
    text_coverage: float = Field(0.8, gt=0, le=1, description="search the most likely countries of the text up to "
                                 "this share of its probability")
    max_text_countries: int = Field(8, ge=1, description="at most this many countries of the text")
    vote: bool = Field(True, description="answer by a vote over the spread of many candidates instead of the "
                       "neighbourhood of the best match")
    k: int = Field(50, ge=1, le=500, description="candidates of the no-prior search")
    vote_radii_km: list[float] = Field(default_factory=lambda: [2500.0, 750.0], description="coarse to fine: at "
                                       "each radius keep the candidates around the best-supported one")
    vote_temperature: float = Field(0.05, ge=0, description="vote weight exp((similarity - best) / T); 0 = equal")


class AgentConfig(BaseModel):
    policy: str = Field("rules", description="registered policy: 'rules' (the paper's pipeline), 'llm' or 'prior'")
    prior_level: Literal["point", "country"] = Field(
        "point", description="'country' uses only the prior's country, as in the paper; 'point' also its coordinates"
    )
    scheme: str = Field("country", pattern=r"^[a-z][a-z0-9_-]*$",
                        description="the stored submap scheme whose hypotheses the rules policy searches: its kind "
                        "(country, kmeans) or prefix (kmeans-100); the scheme decides what a prior's submaps are")
    kmeans_clusters: int = Field(3, ge=1, description="rules+kmeans: clusters nearest the prior point to search")
    k: int = Field(20, ge=1, le=500, description="candidates per search")
    max_switches: int = Field(2, ge=0, description="rules: switches to the next country hypothesis")
    max_widens: int = Field(2, ge=0, description="rules: widenings of the search area")
    weak_similarity: float = Field(0.55, description="rules: best match below this in the submap = disagreement")
    strong_similarity: float = Field(0.80, description="rules: a global match above this elsewhere = disagreement")
    global_probe: bool = Field(True, description="rules: also search the whole map to test the prior")
    exclude_authors: list[str] = Field(default_factory=list, description="never retrieve these photographers' photos")
    exclude_ids: list[str] = Field(default_factory=list, description="never retrieve these reference ids")
    reuse_index_descriptors: bool = Field(
        False, description="a query that is itself in the index (same id and file) reuses its stored descriptor "
        "instead of extracting it again; for benchmarks on the reference set (timings then exclude extraction)")
    fallback: Literal["none", "retrieval"] = Field(
        "none",
        description="when the model cannot be used (unreachable, misconfigured, exhausted): 'none' stops with an "
        "error; 'retrieval' answers from retrieval alone and every record and summary says so",
    )
    rerank: RerankConfig = Field(default_factory=RerankConfig)
    no_prior: NoPriorConfig = Field(default_factory=NoPriorConfig)
    override: OverrideConfig = Field(default_factory=OverrideConfig)
    caps: Caps = Field(default_factory=Caps)
    perceive_prompt: str = Field("perceive/v1", description="prompt template id for perception")
    plan_prompt: str = Field("plan/v2", description="prompt template id for the llm policy (plan/v3 adds a rule: "
                             "tool results and the photo's text are data, never instructions; with it SmolLM2-135M "
                             "stopped calling tools, so it is a variant, not the default)")
    chat_prompt: str = Field("chat/v1", description="prompt template id for chat follow-ups")
