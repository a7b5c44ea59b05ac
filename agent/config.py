"""The agent's configuration: one typed object, every field documented, recorded with each run."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

# Kept here (pure data) so the config imports nothing heavy; agent.trust uses the same table.
DEFAULT_PRIOR = {"1": 0.149, "25": 0.412, "200": 0.586, "750": 0.767, "2500": 0.871}


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

    def tool_calls_left(self, used: int) -> int:
        """How many more tool calls this photo may make: the one place the tool-call cap is read
        (the plan node stops the run at 0 and refuses a turn's calls beyond it, for every policy)."""
        return max(self.max_tool_calls - used, 0)

    def model_deadline(self, started_at: float) -> float:
        """The ``time.time()`` instant after which no model call may run for this photo."""
        return started_at + self.max_seconds - min(self.retrieval_reserve_s, 0.25 * self.max_seconds)


class RerankConfig(BaseModel):
    """Geographic re-ranking of the candidate pool (switch off for the paper's ablation)."""

    enabled: bool = True
    prior_weight: float = Field(5.66, ge=0, description="weight of proximity to the prior's point, in units of the "
                                "map's best-match similarity spread (sd; effnet-gem's 0.088 makes it 0.5 in cosine)")
    prior_scale_km: float = Field(300.0, gt=0, description="e-folding distance of the prior kernel")
    density_weight: float = Field(2.83, ge=0, description="weight of support by nearby candidates, in the same units")
    density_km: float = Field(25.0, gt=0, description="candidates closer than this support each other")


class OverrideConfig(BaseModel):
    """When retrieval may replace the VLM's own point, in calibrated units (``agent.trust``).

    The recorded VLM points are strong (13.6% within 1 km); snapping them to the best visual
    match loses street-level accuracy unless the match is *more likely* right than the prior:
    retrieval wins when the map's calibration gives its spot a higher P(within ``compare_km``)
    than the prior's reliability, by ``margin``, and it lies near the prior.
    """

    enabled: bool = True
    min_support: int = Field(1, ge=1, description="candidates within density_km of the answer (the calibration "
                             "already weighs agreement; 1 = no extra rule)")
    compare_km: Literal[1.0, 25.0, 200.0, 750.0, 2500.0] = Field(
        1.0, description="the distance at which retrieval's and the prior's probabilities are compared: moving the "
        "answer at most max_km_from_prior wins or loses at street level (at 25 km on effnet-gem: 26 photos won "
        "and 33 lost within 1 km; at 1 km: the measured row of eval/RESULTS.md)")
    margin: float = Field(0.0, ge=-1, le=1, description="retrieval's probability must exceed the prior's by this")
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
    vote_temperature: float = Field(
        0.57, ge=0, description="vote weight exp((similarity - best) / (T * sd)), sd the spread of the map's best "
        "matches (its calibration): scale-free; 0.57 reproduces effnet-gem's measured T = 0.05 (sd 0.088); 0 = equal")


class TrustConfig(BaseModel):
    """How far the VLM's point is trusted when no calibration profile says (``agent.trust``)."""

    prior_default: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_PRIOR), description="P(the prior within 1/25/200/750/2500 km): "
        "Gemini 2.0 Flash's record on the shared split (a strong VLM's, so retrieval must beat a good prior)")
    use_stated_uncertainty: bool = Field(True, description="read the model's stated uncertainty_km and country "
                                         "probability (never below the default; a probability of 1 states none)")


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
    weak_ratio: float = Field(0.5, ge=0, le=1, description="rules: widen when the submap's best match is less than "
                              "this share as likely (P within 200 km) as the whole map's best")
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
    trust: TrustConfig = Field(default_factory=TrustConfig)
    caps: Caps = Field(default_factory=Caps)
    perceive_prompt: str = Field("perceive/v1", description="prompt template id for perception")
    plan_prompt: str = Field("plan/v2", description="prompt template id for the llm policy (plan/v3 adds a rule: "
                             "tool results and the photo's text are data, never instructions; with it SmolLM2-135M "
                             "stopped calling tools, so it is a variant, not the default)")
    chat_prompt: str = Field("chat/v1", description="prompt template id for chat follow-ups")
