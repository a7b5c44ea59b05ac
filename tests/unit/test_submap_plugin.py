"""A submap scheme is one file: written here to a folder of its own, it is built into an index,
searched, widened and offered as the prior's hypotheses by the rules policy, with nothing else
touched (no prefix test anywhere outside the scheme)."""

from __future__ import annotations

import importlib.util
import textwrap

import pytest

from geoguide.agent.backends import make_backend
from geoguide.agent.config import AgentConfig
from geoguide.agent.context import AgentContext
from geoguide.agent.graph import locate
from geoguide.geo.geometry import haversine_km
from geoguide.indices.build import BuildConfig, build_index
from geoguide.indices.store import ReferenceIndex
from geoguide.indices.submaps import SCHEMES, SubmapError, parse_schemes
from geoguide.tools.retrieval import WidenArgs, widen
from tests.synthetic import PLACES, place_image, similarity_calibration

BAND_SCHEME = '''
"""Latitude bands of D degrees: label = floor(lat / D); widening adds the bands either side."""

import numpy as np

from geoguide.indices.submaps import PriorHint, SubmapScheme, WHOLE_MAP, register_scheme


@register_scheme
class BandScheme(SubmapScheme):
    kind = "band"

    def __init__(self, param=None):
        super().__init__(param or "10")
        self.degrees = float(self.param)

    def assign(self, lat, lon, country):
        return np.floor(np.asarray(lat) / self.degrees).astype(int).astype(str)

    def label_name(self, label, lat, lon):
        return f"latitudes {int(label) * self.degrees:g} to {(int(label) + 1) * self.degrees:g}"

    def hypotheses(self, index, prior: PriorHint):
        if prior.point is None:
            return []
        label = str(int(np.floor(prior.point[0] / self.degrees)))
        return [self.submap_id(label)] if label in self.table(index).spans else []

    def widen(self, index, labels, near):
        present = set(self.table(index).spans)
        grown = sorted({str(int(x) + d) for x in labels for d in (-1, 0, 1)} & present, key=int)
        if len(grown) == len(labels):
            return WHOLE_MAP, "no more bands -> the whole map"
        return self.submap_id(",".join(grown)), f"added the bands next to {', '.join(labels)}"
'''


@pytest.fixture
def band_scheme(tmp_path, monkeypatch):
    """The scheme's one file, imported from outside the package; unregistered after the test."""
    SCHEMES.load()
    monkeypatch.setattr(SCHEMES, "_entries", dict(SCHEMES._entries))
    path = tmp_path / "plugins" / "band_scheme.py"
    path.parent.mkdir()
    path.write_text(textwrap.dedent(BAND_SCHEME))
    spec = importlib.util.spec_from_file_location("band_scheme", path)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    assert "band" in SCHEMES


@pytest.fixture
def band_index(band_scheme, synthetic_refs, tmp_path):
    _, samples = synthetic_refs
    build_index(samples, tmp_path / "idx", BuildConfig(descriptor="thumbnail", submaps="country,band:10", chunk_size=5),
                progress=False)
    return ReferenceIndex(tmp_path / "idx")


def test_the_rules_policy_searches_and_widens_through_a_scheme_in_one_file(band_index, tmp_path, monkeypatch):
    tokyo, madrid = PLACES[7], PLACES[2]
    photo = tmp_path / "q_tokyo.jpg"
    place_image(7, variant=7).save(photo, quality=95)
    replay = tmp_path / "prior.csv"
    replay.write_text(f"IMG_ID,LAT_pred,LON_pred,location,success,model_name\n"
                      f"q_tokyo.jpg,{madrid[1]},{madrid[2]},\"Madrid, Spain\",True,test-vlm\n")
    similarity_calibration(band_index, monkeypatch)  # on this tiny map a match at similarity 0.9+ is right
    ctx = AgentContext(index=band_index, backend=make_backend(f"replay:{replay}"), config=AgentConfig(scheme="band"))
    pred = locate(ctx, photo)
    ids = [s.submap_id for s in pred.trail]
    assert ids[0] == "band-10:4"  # Madrid (40.4 N): the band scheme's own hypothesis
    widened = [s for s in pred.trail if s.purpose == "widen"]
    assert widened and widened[0].submap_id == "band-10:3,4,5"  # the scheme's widen, through the policy
    assert "added the bands next to 4" in widened[0].reason
    assert haversine_km(pred.lat, pred.lon, tokyo[1], tokyo[2]) < 50  # Tokyo (35.7 N) is in band 3


def test_the_index_names_and_refuses_through_the_scheme(band_index):
    sub = band_index.describe_submap("band-10:3,4")
    assert sub.scheme == "band-10" and sub.size == band_index.resolve("band-10:3,4").size > 0
    res = widen(band_index, WidenArgs(submap_id="band-10:4"))
    assert res.submap_id == "band-10:3,4,5"
    with pytest.raises(SubmapError, match="band-10:99 do not exist"):
        band_index.resolve("band-10:99")
    with pytest.raises(SubmapError, match=r"valid forms: .*radius:LAT,LON,KM.*band-10:LABEL"):
        band_index.resolve("nosuch:1")


def test_query_time_schemes_are_not_built():
    with pytest.raises(ValueError, match="radius submaps are answered at query time"):
        parse_schemes("country,radius")


def test_a_scheme_is_found_from_its_id_prefix_by_the_registry():
    """What the paper's accuracy-vs-K plot needs from a configured scheme, asked of the registry
    rather than by matching 'kmeans-' in eval."""
    from types import SimpleNamespace

    from geoguide.eval.paper import variant_k
    from geoguide.indices.submaps.registry import scheme_of_prefix

    assert scheme_of_prefix("kmeans-100").k == 100 and scheme_of_prefix("country").kind == "country"
    assert scheme_of_prefix("nosuch-3") is None

    def result(scheme: str):
        return SimpleNamespace(variant=SimpleNamespace(spec=SimpleNamespace(
            agent_config=lambda: AgentConfig(scheme=scheme))))

    assert [variant_k(result(s)) for s in ("kmeans-25", "kmeans", "country")] == [25, None, None]
