"""Can a model run on this machine, and where does geoguide look for its weights?

Each descriptor and backend class may define ``availability() -> Availability`` (a classmethod);
``geoguide models`` lists them all. Nothing here touches the network: the Hugging Face cache is
only looked up (``try_to_load_from_cache``), as if ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, Field


class Availability(BaseModel):
    runs_here: bool | None = Field(description="None: it depends on an argument (a server URL, a CSV)")
    detail: str = Field(description="what was found, or what is missing")
    looks_in: list[str] = Field(default_factory=list, description="where weights are searched, in order")
    how_to_get: str = ""


NO_WEIGHTS = Availability(runs_here=True, detail="needs no downloaded weights")


def hf_cache_dir() -> str:
    try:
        from huggingface_hub import constants
    except ImportError:  # the core install has no transformers, so no Hugging Face cache reader
        return os.environ.get("HF_HUB_CACHE", str(Path.home() / ".cache" / "huggingface" / "hub"))
    return str(constants.HF_HUB_CACHE)


def hf_cached(repo_id: str) -> Path | None:
    """The folder of ``repo_id``'s snapshot in the local Hugging Face cache, if one is there."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    try:
        found = try_to_load_from_cache(repo_id, "config.json")
    except ValueError:
        return None
    return Path(found).parent if isinstance(found, str) else None


def local_weights(*, option: str, env_var: str | None, hub_id: str | None,
                  check: Callable[[str], object], how_to_get: str) -> Availability:
    """Try the places a model's weights can be, in the order the model itself tries them:
    ``check(location)`` raises when the location holds nothing usable."""
    looks_in = [option]
    tries: list[str] = []
    if env_var:
        looks_in.append(f"${env_var}")
        if os.environ.get(env_var):
            tries.append(os.environ[env_var])
    if hub_id:
        looks_in.append(f"the Hugging Face cache ({hf_cache_dir()}) for {hub_id}, offline")
        tries.append(hub_id)
    problems = []
    for where in tries:
        try:
            check(where)
        except FileNotFoundError:
            problems.append(f"{where}: not found")
            continue
        except Exception as e:  # noqa: BLE001 - any failure means "not usable from there"
            problems.append(f"{where}: unusable ({str(e).splitlines()[0][:160] if str(e) else type(e).__name__})")
            continue
        return Availability(runs_here=True, detail=f"weights found: {where}", looks_in=looks_in, how_to_get=how_to_get)
    detail = "; ".join(problems) if problems else f"no weights configured (set {looks_in[-1] if env_var else option})"
    return Availability(runs_here=False, detail=detail, looks_in=looks_in, how_to_get=how_to_get)
