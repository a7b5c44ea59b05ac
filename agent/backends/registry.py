"""Backend registry: spec prefix -> backend class, so adding a backend touches no dispatch code.

A spec is ``PREFIX`` or ``PREFIX:REST`` (``openai:gpt-4o``, ``llava:/models/llava-1.5-7b-hf``,
``replay:priors.csv``, ``none``); the prefix is everything before the first ``:`` and the class
registered under it parses ``REST`` in its ``from_spec`` (``openai-compatible`` splits a URL
that itself contains colons, see ``openai_backend.split_base_url``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from geoguide.agent.backends.errors import BackendConfigError
from geoguide.agent.backends.options import BackendOptions
from geoguide.core.registry import Registry

if TYPE_CHECKING:
    from geoguide.agent.backends.base import Backend

BackendT = TypeVar("BackendT", bound="Backend")

# prefix -> class; ``cls.from_spec(rest, **options)`` builds one. Every public module of this
# package is imported on the first lookup, not at import, so ``--help`` stays fast and a new
# backend is one file with one decorator line; heavy dependencies (torch, transformers) are imported
# inside a module only when a model is actually loaded, and a module that needs them at its top is
# private (``_geoclip_model``: a network, not a backend) and never scanned.
BACKENDS: Registry[type[Backend]] = Registry(
    "backend", key=None, error=BackendConfigError, package="geoguide.agent.backends",
    unknown="unknown backend {name!r} in spec {spec!r}; available: {available}",
    # Built-ins whose module is not named like them; a lookup then imports one module, not all
    # (the OpenAI SDK alone is 0.4 s of a cold locate with --vlm none).
    homes={"none": "offline", "replay": "offline", "openai": "openai_backend",
           "openai-compatible": "openai_backend", "geoclip": "local_priors", "clip-zeroshot": "local_priors"},
)
_load_builtins = BACKENDS.load  # kept for callers that load the built-ins explicitly (``geoguide models``)


def register_backend(prefix: str) -> Callable[[type[BackendT]], type[BackendT]]:
    """``@register_backend("myprefix")``: specs ``myprefix`` and ``myprefix:REST`` build this class."""
    return BACKENDS.register(prefix)


def parse_spec(spec: str) -> tuple[str, str]:
    """``"openai-compatible:http://h:8000/v1:m"`` -> ``("openai-compatible", "http://h:8000/v1:m")``."""
    prefix, _, rest = spec.strip().partition(":")
    return prefix, rest


def available_backends() -> list[str]:
    return BACKENDS.names()


def backend_class(spec: str) -> type[Backend]:
    """The class a spec names (its module imported, nothing built)."""
    return BACKENDS.get(parse_spec(spec)[0], spec=spec)


def make_backend(spec: str, **options: Any) -> Backend:
    """Build the backend a spec names; ``options`` go to its constructor (cache=, timeout=, ...)."""
    prefix, rest = parse_spec(spec)
    cls = backend_class(spec)
    refused = sorted(k for k in options if k in BackendOptions.model_fields and k not in cls.model_options)
    if refused:
        takes = ", ".join(sorted(cls.model_options)) or "none"
        raise BackendConfigError(f"backend {prefix!r} does not take model option(s) {', '.join(refused)}; it takes: {takes}")
    return cls.from_spec(rest, **options)
