"""The networks behind ``geoclip`` and ``clip-zeroshot`` (torch; imported only when one runs).

GeoCLIP's location encoder and image head are re-implemented here with the module names of the
``geoclip`` package (``LocEnc{i}.capsule.{0,1,3,5}``, ``LocEnc{i}.head.0``; the head's ``0``/``2``),
so the state dicts it ships load with ``strict=True``; its own modules import pandas and
transformers' processors (torchvision), which geoguide does not install.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import math
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from geoguide.agent.backends.errors import BackendConfigError
from geoguide.core.errors import first_line
from geoguide.indices.descriptors.base import ModelLoadError, WeightsNotFoundError

# Equal Earth projection constants (Šavrič et al. 2018), as GeoCLIP uses them.
A1, A2, A3, A4, SF = 1.340264, -0.081106, 0.000893, 0.003796, 66.50336
SIGMAS = (2**0, 2**4, 2**8)  # GeoCLIP's three random-Fourier-feature scales
HEAD_IN = 768  # CLIP ViT-L/14's projection width: what GeoCLIP's image head takes
GALLERY_CHUNK = 8192

log = logging.getLogger(__name__)


def package_dir() -> Path:
    spec = importlib.util.find_spec("geoclip")
    if spec is None or not spec.submodule_search_locations:
        raise WeightsNotFoundError("geoclip: the geoclip package is not installed (make setup installs it with "
                                   "--no-deps: pip install --no-deps geoclip); it ships GeoCLIP's head, location "
                                   "encoder and GPS gallery")
    return Path(spec.submodule_search_locations[0]) / "model"


WEIGHT_FILES = ("image_encoder_mlp_weights.pth", "location_encoder_weights.pth", "logit_scale_weights.pth")


@lru_cache(maxsize=1)
def package_weights_digest() -> str:
    h = hashlib.sha256()
    for name in WEIGHT_FILES:
        h.update((package_dir() / "weights" / name).read_bytes())
    return h.hexdigest()[:16]


def equal_earth(latlon: torch.Tensor) -> torch.Tensor:
    lat, lon = torch.deg2rad(latlon[:, 0]), torch.deg2rad(latlon[:, 1])
    theta = torch.asin(math.sqrt(3.0) / 2 * torch.sin(lat))
    denom = 3 * (9 * A4 * theta**8 + 7 * A3 * theta**6 + 3 * A2 * theta**2 + A1)
    x = 2 * math.sqrt(3.0) * lon * torch.cos(theta) / denom
    y = A4 * theta**9 + A3 * theta**7 + A2 * theta**3 + A1 * theta
    return torch.stack((x, y), dim=1) * SF / 180


class GaussianEncoding(nn.Module):
    """Random Fourier features [cos 2πBv, sin 2πBv] with a fixed ``b`` (stored in the checkpoint)."""

    def __init__(self, encoded: int = 256, inputs: int = 2) -> None:
        super().__init__()
        self.b = nn.Parameter(torch.zeros(encoded, inputs), requires_grad=False)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        vp = 2 * math.pi * v @ self.b.T
        return torch.cat((torch.cos(vp), torch.sin(vp)), dim=-1)


class LocationCapsule(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.capsule = nn.Sequential(GaussianEncoding(), nn.Linear(512, 1024), nn.ReLU(), nn.Linear(1024, 1024),
                                     nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(1024, 512))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.capsule(x))


class LocationEncoder(nn.Module):
    def __init__(self, n: int = len(SIGMAS)) -> None:
        super().__init__()
        for i in range(n):
            self.add_module(f"LocEnc{i}", LocationCapsule())
        self.n = n

    def forward(self, latlon: torch.Tensor) -> torch.Tensor:
        x = equal_earth(latlon)
        return sum(self._modules[f"LocEnc{i}"](x) for i in range(self.n))


def image_head() -> nn.Sequential:
    return nn.Sequential(nn.Linear(HEAD_IN, 768), nn.ReLU(), nn.Linear(768, 512))


def load_strict(module: nn.Module, path: Path) -> None:
    """Load a state dict key for key; anything missing, extra or misshapen is a clear error."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        module.load_state_dict(state, strict=True)
    except (RuntimeError, OSError, ValueError) as e:
        first = first_line(e)
        raise ModelLoadError(f"geoclip: {path} does not load into GeoCLIP's {type(module).__name__} ({first}); "
                             "reinstall the geoclip package") from None


class GeoCLIPHead:
    """CLIP tower + GeoCLIP head and the gallery's normalised location embeddings."""

    def __init__(self, clip_folder: Path, device: str, cache_dir: Path | None = None) -> None:
        from geoguide.indices.descriptors.clip import load_clip_vision

        self.net, self.preprocess = load_clip_vision(str(clip_folder), device)
        width = int(self.net.config.projection_dim)
        if width != HEAD_IN:
            raise ModelLoadError(f"geoclip: GeoCLIP's image head takes {HEAD_IN}-d CLIP ViT-L/14 projections; "
                                 f"{clip_folder} projects to {width}-d (use openai/clip-vit-large-patch14)")
        root = package_dir()
        self.head = image_head()
        load_strict(self.head, root / "weights" / WEIGHT_FILES[0])
        locations = LocationEncoder()
        load_strict(locations, root / "weights" / WEIGHT_FILES[1])
        self.logit_scale = float(torch.load(root / "weights" / WEIGHT_FILES[2], weights_only=True).exp())
        self.gallery = load_gallery(gallery_path())
        self.gallery_features = cached_gallery_features(locations, self.gallery, cache_dir)
        self.device = device

    def top_k(self, images: list, k: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per image: (lat, lon, probability) of its k most likely gallery points, best first."""
        with torch.inference_mode():
            x = self.preprocess(images).to(self.device)
            feats = nn.functional.normalize(self.head(self.net(pixel_values=x).image_embeds.float().cpu()), dim=1)
            probs = (self.logit_scale * feats @ self.gallery_features.T).softmax(dim=-1)
            top = torch.topk(probs, min(k, probs.shape[1]), dim=1)
        out = []
        for idx, p in zip(top.indices.numpy(), top.values.numpy(), strict=True):
            pts = self.gallery[idx]
            out.append((pts[:, 0].astype(np.float64), pts[:, 1].astype(np.float64), p.astype(np.float64)))
        return out


def gallery_path() -> Path:
    """GeoCLIP's 100K-point GPS gallery, or ``$GEOGUIDE_GEOCLIP_GALLERY``: a CSV of LAT,LON (with a
    header) of one's own, e.g. denser where one's photos are."""
    own = os.environ.get("GEOGUIDE_GEOCLIP_GALLERY")
    return Path(own).expanduser() if own else package_dir() / "gps_gallery" / "coordinates_100K.csv"


def load_gallery(path: Path) -> np.ndarray:
    try:
        pts = np.loadtxt(path, delimiter=",", skiprows=1, usecols=(0, 1), dtype=np.float32, ndmin=2)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"geoclip: cannot read the GPS gallery {path} ({e}); it must be a CSV of LAT,LON "
                             "with a header line") from None
    bad = ~((np.abs(pts[:, 0]) <= 90) & (np.abs(pts[:, 1]) <= 180))
    if len(pts) == 0 or bad.any():
        raise ModelLoadError(f"geoclip: the GPS gallery {path} has {int(bad.sum())} out-of-range rows of {len(pts)}")
    return pts


def cached_gallery_features(encoder: LocationEncoder, gallery: np.ndarray, cache_dir: Path | None) -> torch.Tensor:
    """The gallery's embeddings, computed once and kept beside the response cache: 100K points
    take 131 s on this 2-core machine (busy), a cached file loads in well under a second."""
    if cache_dir is None:
        return gallery_features(encoder, gallery)
    key = hashlib.sha256(gallery.tobytes() + package_weights_digest().encode()).hexdigest()[:16]
    path = cache_dir / f"geoclip-gallery-{key}.npy"
    if path.is_file():
        return torch.from_numpy(np.load(path))
    log.warning("geoclip: embedding the %d-point GPS gallery once (about 2 min for 100K on 2 cores); "
                "cached in %s", len(gallery), path)
    feats = gallery_features(encoder, gallery)
    from geoguide.core.atomic import save_npy

    save_npy(path, feats.numpy())
    return feats


def gallery_features(encoder: LocationEncoder, gallery: np.ndarray) -> torch.Tensor:
    """(N, 512) normalised embeddings of the gallery points."""
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(gallery), GALLERY_CHUNK):
            part = torch.from_numpy(gallery[start:start + GALLERY_CHUNK])
            chunks.append(nn.functional.normalize(encoder(part), dim=1))
    return torch.cat(chunks)


class ZeroShotCountries:
    """CLIP's image embedding against "a photo taken in {country}." for each country."""

    def __init__(self, folder: Path, template: str, codes: list[str] | None, device: str) -> None:
        from geoguide.core.extras import require

        require("transformers", "geoclip", "the geoclip and clip-zeroshot priors")
        from transformers import CLIPModel, CLIPTokenizer
        from transformers.utils import logging as hf_logging

        from geoguide.geo import countries
        from geoguide.indices.descriptors.clip import clip_preprocess

        known = countries()
        self.codes = [c for c in (codes or sorted(known)) if c in known]
        if not self.codes:
            raise BackendConfigError("clip-zeroshot: none of the reference map's countries is known to geoguide")
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            model = CLIPModel.from_pretrained(str(folder), local_files_only=True)
            tokenizer = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
        except Exception as e:  # noqa: BLE001 - every failure here means "not a full CLIP with a tokenizer"
            first = first_line(e)
            raise ModelLoadError(f"clip-zeroshot: {folder} is not a full CLIP checkpoint with its tokenizer "
                                 f"({type(e).__name__}: {first}); StreetCLIP or openai/clip-vit-large-patch14 "
                                 "saved with save_pretrained has both") from None
        finally:
            hf_logging.set_verbosity(verbosity)
        # The full model's own vision tower: loading CLIPVisionModelWithProjection too would hold it twice.
        self.preprocess = clip_preprocess(str(folder), int(model.config.vision_config.image_size))
        self.model = model.eval().to(device)
        self.device = device
        prompts = [template.format(country=known[c].name) for c in self.codes]
        with torch.inference_mode():
            tokens = tokenizer(prompts, padding=True, return_tensors="pt").to(device)
            text = _features(self.model.get_text_features(**tokens))
        self.text = nn.functional.normalize(text.float(), dim=1)
        self.scale = float(self.model.logit_scale.detach().exp())

    @property
    def n_countries(self) -> int:
        return len(self.codes)

    def rank(self, image) -> tuple[list[str], np.ndarray]:
        with torch.inference_mode():
            x = self.preprocess([image]).to(self.device)
            img = nn.functional.normalize(_features(self.model.get_image_features(pixel_values=x)).float(), dim=1)
            probs = (self.scale * img @ self.text.T).softmax(dim=-1)[0].cpu().numpy()
        order = np.argsort(-probs)
        return [self.codes[i] for i in order], probs[order]


def _features(output) -> torch.Tensor:
    """``get_*_features`` returns a tensor in transformers 4 and an output object in 5."""
    if isinstance(output, torch.Tensor):
        return output
    pooled = getattr(output, "pooler_output", None)
    if isinstance(pooled, torch.Tensor):
        return pooled
    return output[0]
