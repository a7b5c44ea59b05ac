"""Checkpoints the user already has on disk: find the file, read it safely, load it key for key.

Shared by the descriptors that reimplement a published network (``megaloc``, ``netvlad``) so the
official checkpoint loads into them unchanged. Three decisions live here:

- Where the file comes from: the descriptor's ``weights`` option, else one environment variable
  per descriptor; never the network. Nothing found is a ``WeightsNotFoundError`` at construction
  that says where to put the file and where the authors publish it.
- How it is read: ``torch.load(weights_only=True)`` (no code in a pickle ever runs) or
  safetensors. Training checkpoints that wrap the weights in ``{"state_dict": ...}`` next to
  NumPy-scalar metrics (pytorch-NetVlad's ``checkpoint.pth.tar``) are unwrapped, with only NumPy's
  scalar and dtype constructors allowed through the unpickler.
- How it is loaded: the network is built on the ``meta`` device (no random initialisation of
  the 229M MegaLoc parameters that the checkpoint overwrites anyway), given uninitialised storage, and filled
  by ``load_state_dict_strict``, which names every missing, unexpected and mis-shaped key.

``file_identity`` (size + hash of the first and last MiB) stands for the file in a descriptor's
fingerprint, so an index and its queries must use the same checkpoint wherever it lies.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from geoguide.indices.descriptors.base import ModelLoadError, WeightsNotFoundError
from geoguide.indices.descriptors.efficientnet_lite import load_state_dict_strict

TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".tar", ".ckpt", ".torch")


def where_weights_go(env_var: str, how_to_get: str, what: str = "the file", form: str = "/path/to/file") -> str:
    """The end of every "no weights" message: how to give them, and where they are published."""
    return (f"geoguide never downloads weights: pass {what} with --descriptor-opt weights={form} "
            f"(conf {{'weights': ...}}) or set {env_var}; {how_to_get}")


def resolve_weights_file(descriptor: str, option: str | None, env_var: str, how_to_get: str) -> Path:
    """The checkpoint file named by ``option`` (else ``$env_var``), or ``WeightsNotFoundError``."""
    where = where_weights_go(env_var, how_to_get)
    value, origin = (option, "weights=") if option else (os.environ.get(env_var), f"{env_var}=")
    if not value:
        raise WeightsNotFoundError(f"{descriptor}: no weights given; {where}")
    path = Path(value).expanduser()
    if path.is_dir():
        raise WeightsNotFoundError(f"{descriptor}: {origin}{value} is a folder; it must be the checkpoint file; {where}")
    if not path.is_file():
        raise WeightsNotFoundError(f"{descriptor}: {origin}{value}: no such file; {where}")
    return path


def file_identity(path: Path, window: int = 1 << 20) -> str:
    """Size + SHA-256 of the first and last MiB: tells checkpoints apart without reading 900 MB."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(window))
        f.seek(max(0, size - window))
        h.update(f.read(window))
    return f"{size}:{h.hexdigest()[:16]}"


def numpy_scalar_globals() -> list:
    """What a checkpoint pickled with NumPy metrics needs: scalar/dtype constructors only."""
    from numpy._core.multiarray import scalar

    dtypes = [type(np.dtype(t)) for t in ("f4", "f8", "i4", "i8", "bool")]
    return [scalar, (scalar, "numpy.core.multiarray.scalar"), np.dtype, *dtypes]


def read_state_dict(path: Path, descriptor: str) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` or torch checkpoint (``{"state_dict": ...}`` unwrapped)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except pickle.UnpicklingError:
                with torch.serialization.safe_globals(numpy_scalar_globals()):
                    state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt, truncated, a pickle with code in it, not a checkpoint at all
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ModelLoadError(
            f"{descriptor}: cannot read weights from {path} ({type(e).__name__}: {first[:200]}); "
            f"it must be a PyTorch state dict ({', '.join(TORCH_SUFFIXES)}) or a .safetensors file"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(
            f"{descriptor}: {path} holds a {type(state).__name__}, not a state dict of tensors "
            "(a whole pickled model cannot be loaded safely; save its state_dict())"
        )
    return state


def load_into(build: Callable[[], nn.Module], state: dict[str, torch.Tensor], source: str,
              renames: Sequence[tuple[str, str]] = (),
              adapt: Callable[[dict[str, torch.Tensor], set[str]], dict[str, torch.Tensor]] | None = None) -> nn.Module:
    """``build()`` on the meta device, filled from ``state`` key for key, in eval mode, float32.

    ``renames``: (published, ours) substrings for a key the model does not have whose renamed form
    it does (a library that renamed its modules but not its published files), nothing else;
    ``adapt(state, model_keys)`` may rewrite the state before that (a tensor split in two).
    Raises ``WeightsLoadError`` (a ``GeoguideError``) naming each missing, unexpected or
    mis-shaped key, with ``source`` (the file) in the message.
    """
    with torch.device("meta"):
        model = build()
    if renames or adapt:
        own = set(model.state_dict())
        state = adapt(state, own) if adapt else state
        state = {_renamed(k, own, renames): v for k, v in state.items()}
    model = model.to_empty(device="cpu")
    load_state_dict_strict(model, state, source=source)
    return model.float().eval()


def _renamed(key: str, own: set[str], renames: Sequence[tuple[str, str]]) -> str:
    if key in own:
        return key
    for published, ours in renames:
        if published in key and (new := key.replace(published, ours)) in own:
            return new
    return key


def shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Every state-dict key with its shape (of a meta-device model too)."""
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}
