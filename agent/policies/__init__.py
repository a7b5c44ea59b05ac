"""Policies (``--policy``): ``rules`` (the paper's deterministic pipeline), ``llm`` (the model
plans with tool calls) and ``prior`` (no retrieval: the VLM's answer alone, a baseline). Each module
here registers one with ``@register_policy``; they are imported on the first lookup."""

from geoguide.agent.policies.base import POLICIES, Decision, Policy, make_policy, register_policy

__all__ = ["POLICIES", "Decision", "Policy", "make_policy", "register_policy"]
