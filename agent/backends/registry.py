"""Backend registry: spec prefix -> backend class, so adding a backend touches no dispatch code.

A spec is ``PREFIX`` or ``PREFIX:REST`` (``openai:gpt-4o``, ``llava:/models/llava-1.5-7b-hf``,
``replay:priors.csv``, ``none``); the prefix is everything before the first ``:`` and the class
registered under it parses ``REST`` in its ``from_spec`` (``openai-compatible`` splits a URL
that itself contains colons, see ``openai_backend.split_base_url``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from agent.backends.errors import BackendConfigError
from agent.backends.options import BackendOptions

if TYPE_CHECKING:
    from agent.backends.base import Backend

BackendT = TypeVar("BackendT", bound="Backend")

BACKENDS: dict[str, type[Backend]] = {}  # prefix -> class; ``cls.from_spec(rest, **options)`` builds one

# Modules whose import registers the built-in backends; heavy dependencies (torch,
# transformers) are imported inside them only when a model is actually loaded.
_BUILTIN_MODULES = (
    "agent.backends.openai_backend", "agent.backends.llava", "agent.backends.offline", "agent.backends.local_priors",
)


def register_backend(prefix: str) -> Callable[[type[BackendT]], type[BackendT]]:
    def decorate(cls: type[BackendT]) -> type[BackendT]:
        if BACKENDS.get(prefix, cls) is not cls:
            raise ValueError(f"backend prefix {prefix!r} registered twice")
        BACKENDS[prefix] = cls
        return cls

    return decorate


def _load_builtins() -> None:
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)


def parse_spec(spec: str) -> tuple[str, str]:
    """``"openai-compatible:http://h:8000/v1:m"`` -> ``("openai-compatible", "http://h:8000/v1:m")``."""
    prefix, _, rest = spec.strip().partition(":")
    return prefix, rest


def available_backends() -> list[str]:
    _load_builtins()
    return sorted(BACKENDS)


def make_backend(spec: str, **options: Any) -> Backend:
    """Build the backend a spec names; ``options`` go to its constructor (cache=, timeout=, ...)."""
    _load_builtins()
    prefix, rest = parse_spec(spec)
    if prefix not in BACKENDS:
        raise BackendConfigError(f"unknown backend {prefix!r} in spec {spec!r}; available: {', '.join(sorted(BACKENDS))}")
    cls = BACKENDS[prefix]
    refused = sorted(k for k in options if k in BackendOptions.model_fields and k not in cls.model_options)
    if refused:
        takes = ", ".join(sorted(cls.model_options)) or "none"
        raise BackendConfigError(f"backend {prefix!r} does not take model option(s) {', '.join(refused)}; it takes: {takes}")
    return cls.from_spec(rest, **options)
