"""Policies (``--policy``): ``rules`` (the paper's deterministic pipeline) and ``llm`` (the model plans)."""

from agent.policies import llm, rules  # noqa: F401  (registration)
from agent.policies.base import POLICIES, Decision, Policy, make_policy, register_policy

__all__ = ["POLICIES", "Decision", "Policy", "make_policy", "register_policy"]
