"""What a run is made of, as data: the context's ingredients (``ContextSpec``) and the agent-config
overrides every shell accepts (``--set KEY=VALUE``, an ablation plan's settings).

One definition for every command: ``geoguide locate``, ``chat``, ``serve`` and ``eval`` all reduce
their options to a ``ContextSpec``, and ``agent.factory.build_context`` turns it into the one
``AgentContext``, so a setting means the same thing everywhere and a typo fails the same way.
Light on purpose (pydantic only): the command line imports it to answer ``--help`` at once.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from geoguide.agent.config import AgentConfig
from geoguide.core.derived import cache_root
from geoguide.core.validation import describe_validation

DEFAULT_TIMEOUT_S, DEFAULT_ATTEMPTS = 60.0, 4

# Short names accepted in --set and ablation plans, for the settings ablations vary most.
CONFIG_ALIASES: dict[str, str] = {
    "rerank": "rerank.enabled",
    "rerank_weight": "rerank.prior_weight",
    "prompt": "perceive_prompt",
}


class ContextSpec(BaseModel):
    """The ingredients of an ``AgentContext``: the index, the models and the config overrides."""

    model_config = ConfigDict(extra="forbid")

    index: Path | None = Field(None, description="reference index directory")
    vlm: str = Field("none", description="the perceiving model's backend spec")
    policy: str = Field("rules", description="registered policy")
    cache: Path | None = Field(None, description="SQLite response cache (None: the default file; 'none' disables)")
    timeout: float = Field(DEFAULT_TIMEOUT_S, gt=0, description="seconds per model call (capped by the photo's budget)")
    attempts: int = Field(DEFAULT_ATTEMPTS, ge=1, description="tries per model call, the first included")
    vlm_opts: list[str] = Field(default_factory=list, description="KEY=VALUE options of the VLM backend")
    planner: str | None = Field(None, description="the planning model's spec (default: the VLM)")
    planner_opts: list[str] = Field(default_factory=list, description="KEY=VALUE options of the planner")
    query_vectors: Path | None = Field(None, description="the photos' vectors computed elsewhere (indices.importing)")
    calibration: Path | None = Field(None, description="a calibration profile (geoguide calibrate): answers' "
                                     "probabilities recalibrated and a radius with its coverage")
    config: dict[str, Any] = Field(default_factory=dict, description="dotted AgentConfig key -> value")

    @classmethod
    def from_settings(cls, settings: dict[str, Any]):
        """A flat mapping (command-line options, a plan's [base] + variant) -> a spec: a key that
        names a field of the spec sets it, any other must be an AgentConfig key (dotted, or an
        alias) and becomes a config override; a typo fails, listing what is settable."""
        fields = frozenset(cls.model_fields) - {"config"}
        own: dict[str, Any] = {}
        config: dict[str, Any] = {}
        for key, value in flatten(settings).items():
            if key in fields:
                own[key] = value
            else:
                k, v = config_override(key, value, fields)
                config[k] = v
        return validated(cls, **own, config=config)

    def agent_config(self) -> AgentConfig:
        """The config these overrides make; a bad value is one readable ValueError line."""
        return validated(AgentConfig, policy=self.policy, **nest(self.config))


def default_cache_path() -> Path:
    """``$XDG_CACHE_HOME/geoguide/responses.sqlite``: the response cache; sessions live beside it."""
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    return root / "responses.sqlite"


@functools.cache
def settable_keys() -> frozenset[str]:
    """``config_keys()`` as a set, computed once: every override checks against it."""
    return frozenset(config_keys())


def config_keys(model: type[BaseModel] = AgentConfig, prefix: str = "") -> list[str]:
    """Every settable dotted key of the agent config (``rerank.enabled``, ``caps.max_steps``, ...)."""
    keys: list[str] = []
    for name, field in model.model_fields.items():
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            keys += config_keys(sub, f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"rerank": {"enabled": False}}`` -> ``{"rerank.enabled": False}`` (TOML tables, JSON objects)."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def nest(flat: dict[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def config_override(key: str, value: Any, also_settable: frozenset[str] = frozenset()) -> tuple[str, Any]:
    """Resolve an alias and check the key exists: a typo must fail, not be silently ignored."""
    key = CONFIG_ALIASES.get(key, key)
    if key not in settable_keys():
        raise ValueError(f"unknown setting {key!r}; settable: {', '.join(sorted(also_settable | settable_keys()))}")
    return key, value


def parse_assignment(text: str, option: str = "--set") -> tuple[str, Any]:
    """``KEY=VALUE`` with a JSON value, or the raw text when it is not JSON (``prompt=perceive/v2``);
    ``option`` names the flag in the error (``--set``, ``--descriptor-opt``)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"{option} needs KEY=VALUE, got {text!r}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


def validated(model: type[BaseModel], **values: Any) -> Any:
    """Construct ``model``; a validation error becomes one readable ValueError line."""
    try:
        return model(**values)
    except ValidationError as exc:
        raise ValueError(f"invalid settings: {describe_validation(exc, whole=model.__name__)}") from None
