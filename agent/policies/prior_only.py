"""``prior``: no retrieval at all — the VLM's answer as it stands (the benchmark's "prior only" row)."""

from __future__ import annotations

from geoguide.agent.context import AgentContext
from geoguide.agent.policies.base import Decision, Policy, register_policy
from geoguide.agent.state import AgentState


@register_policy
class PriorOnlyPolicy(Policy):
    name = "prior"

    def decide(self, state: AgentState, ctx: AgentContext) -> Decision:
        return Decision(done=True)
