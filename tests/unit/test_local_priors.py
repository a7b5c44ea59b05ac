"""``geoclip:`` and ``clip-zeroshot:`` backends through the real loading paths, with a tiny random
CLIP whose projection width (768) matches GeoCLIP's head, the geoclip package's own shipped head,
location encoder and (a slice of its) GPS gallery."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from geoguide.agent.backends import make_backend
from geoguide.indices.descriptors.base import ModelLoadError, WeightsNotFoundError
from tests.synthetic import place_image

pytest.importorskip("geoclip", reason="the geoclip package is not installed (make setup installs it --no-deps)")


def _tokenizer(folder: Path):
    """A CLIP tokenizer over a byte-level vocabulary with no merges: every character is a token."""
    from transformers import CLIPTokenizer

    chars = [chr(c) for c in range(33, 127)] + [chr(c) for c in range(161, 256)]
    tokens = ["<|startoftext|>", "<|endoftext|>", *chars, *(c + "</w>" for c in chars)]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[])


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    from transformers import CLIPConfig, CLIPModel

    folder = tmp_path_factory.mktemp("tiny_clip")
    tok = _tokenizer(folder)
    n_vocab = len(tok)
    torch.manual_seed(0)
    config = CLIPConfig(
        projection_dim=768,
        text_config={"vocab_size": n_vocab, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 77, "bos_token_id": 0,
                     "eos_token_id": 1, "pad_token_id": 1, "projection_dim": 768},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 16, "projection_dim": 768},  # as clip-vit-large-patch14's
    )
    CLIPModel(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture
def small_gallery(tmp_path, monkeypatch) -> Path:
    """Every 50th point of GeoCLIP's gallery (2,000): the 100K take minutes to embed on 2 cores."""
    from geoguide.agent.backends._geoclip_model import package_dir

    rows = (package_dir() / "gps_gallery" / "coordinates_100K.csv").read_text().splitlines()
    path = tmp_path / "gallery.csv"
    path.write_text("\n".join([rows[0], *rows[1::50]]) + "\n")
    monkeypatch.setenv("GEOGUIDE_GEOCLIP_GALLERY", str(path))
    return path


def test_our_location_encoder_and_head_match_the_geoclip_package(small_gallery):
    """Key for key (strict load) and number for number against the package's own modules."""
    pytest.importorskip("pandas", reason="the geoclip package's own modules import pandas")
    from geoclip.model.location_encoder import LocationEncoder as Theirs

    from geoguide.agent.backends._geoclip_model import LocationEncoder, load_gallery, load_strict, package_dir

    ours = LocationEncoder()
    load_strict(ours, package_dir() / "weights" / "location_encoder_weights.pth")
    pts = torch.from_numpy(load_gallery(small_gallery)[:200])
    with torch.inference_mode():
        assert torch.allclose(ours(pts), Theirs()(pts), atol=1e-4)


def test_geoclip_prior_from_a_tiny_clip(clip_dir, small_gallery, tmp_path):
    cache = tmp_path / "cache" / "replies.sqlite"
    backend = make_backend(f"geoclip:{clip_dir}", cache=str(cache), timeout=5.0, max_attempts=2)
    img = place_image(0, variant=3)
    out = backend.perceive(img, "ignored prompt", image_id="q.jpg")
    p = out.perception
    assert out.error is None and p is not None and p.has_point and p.uncertainty_km >= 25
    gallery = np.loadtxt(small_gallery, delimiter=",", skiprows=1)
    assert np.abs(gallery - [p.lat, p.lon]).sum(axis=1).min() < 1e-3  # the answer is a gallery point
    assert p.countries and 0.99 <= sum(c.probability for c in p.countries) <= 1.0001 or len(p.countries) == 5
    assert [c.probability for c in p.countries] == sorted((c.probability for c in p.countries), reverse=True)
    assert list((cache.parent).glob("geoclip-gallery-*.npy"))  # embedded once, kept beside the cache
    again = backend.perceive(img, None, image_id="q.jpg")
    assert again.usage.cache_hits == 1 and again.perception == p
    other = backend.perceive(place_image(5, variant=1))
    assert other.usage.cache_hits == 0
    backend.close()


def test_geoclip_refuses_a_clip_of_the_wrong_width(tmp_path, small_gallery):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                   num_attention_heads=2, image_size=32, patch_size=16,
                                                   projection_dim=16)).save_pretrained(tmp_path)
    backend = make_backend(f"geoclip:{tmp_path}")
    with pytest.raises(ModelLoadError, match="768"):
        backend.perceive(Image.new("RGB", (40, 40)))


def test_missing_weights_say_where_to_put_them(tmp_path):
    for prefix in ("geoclip", "clip-zeroshot"):
        with pytest.raises(WeightsNotFoundError, match="never downloads"):
            make_backend(f"{prefix}:{tmp_path / 'nothing-here'}")


def test_clip_zeroshot_ranks_the_maps_countries(clip_dir, tmp_path):
    backend = make_backend(f"clip-zeroshot:{clip_dir}", cache=str(tmp_path / "c.sqlite"))
    backend.restrict_countries(["FR", "JP", "ES", "PT", "ZZ"])
    p = backend.perceive(place_image(1, variant=2)).perception
    assert p is not None and not p.has_point
    assert {c.iso2 for c in p.countries} == {"FR", "JP", "ES", "PT"}  # ZZ is no country
    assert abs(sum(c.probability for c in p.countries) - 1) < 1e-3


def test_clip_zeroshot_needs_the_text_tower(tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                   num_attention_heads=2, image_size=32, patch_size=16,
                                                   projection_dim=16)).save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="tokenizer"):
        make_backend(f"clip-zeroshot:{tmp_path}").perceive(Image.new("RGB", (40, 40)))


@pytest.mark.parametrize("prefix", ["geoclip", "clip-zeroshot"])
def test_locate_and_eval_with_a_local_prior(prefix, clip_dir, small_gallery, synthetic_index, synthetic_refs, tmp_path):
    from geoguide.app.cli import main

    root, samples = synthetic_refs
    photo = tmp_path / "q.jpg"
    place_image(0, variant=7).save(photo)
    out = tmp_path / "pred.json"
    env_cache = str(tmp_path / "cache.sqlite")
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["locate", str(photo), "--index", str(synthetic_index.root), "--vlm", f"{prefix}:{clip_dir}",
                   "--json", "--cache", env_cache, "-q"])
    assert rc == 0
    pred = json.loads(buf.getvalue())
    assert pred["vlm"] == f"{prefix}:{clip_dir}" and pred["prior"]["countries"] and pred["lat"] is not None
    labels = tmp_path / "labels.csv"
    labels.write_text("IMG_ID,AUTHOR,LAT,LON\n" + "".join(
        f"{Path(s.image_path).name},{s.author},{s.lat},{s.lon}\n" for s in samples[:4]))
    rc = main(["eval", "--images", str(Path(samples[0].image_path).parent), "--labels", str(labels),
               "--index", str(synthetic_index.root), "--vlm", f"{prefix}:{clip_dir}", "--cache", env_cache,
               "--out", str(out.with_suffix("")), "--exclude-same-author"])
    assert rc == 0
    summary = json.loads((out.with_suffix("") / "summary.json").read_text())
    assert summary["evaluated"] == 4 and summary["failed"] == 0 and not summary["no_prior"], summary
    records = [json.loads(line) for line in (out.with_suffix("") / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == 4 and all(r["prior_country"] for r in records)
