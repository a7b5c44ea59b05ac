"""``read_text`` for real: text rendered onto images with fonts that ship in packages, read by the
shipped OCR model, its language identified and turned into countries; the rules policy and the
planner using it; the vote that answers photos without a prior."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import pytest
from PIL import Image, ImageDraw, ImageFont

from geoguide.agent.backends import make_backend
from geoguide.agent.config import AgentConfig, NoPriorConfig
from geoguide.agent.context import AgentContext
from geoguide.agent.graph import locate
from geoguide.agent.rerank import vote
from geoguide.core.images import ImageLoadError
from geoguide.geo.geometry import haversine_km
from geoguide.tools.base import ToolError
from geoguide.tools.read_text import (
    LanguageGuess,
    TextReader,
    countries_for,
    identify_languages,
    read_text,
    read_text_file,
)
from geoguide.tools.retrieval import Candidate
from tests.synthetic import PLACES

pytest.importorskip("rapidocr_onnxruntime", reason="rapidocr-onnxruntime (make setup installs it) is not installed")
BERLIN = PLACES[4]


def _font(name: str) -> Path:
    import matplotlib

    return Path(matplotlib.__file__).parent / "mpl-data/fonts/ttf" / name


def _cjk_font() -> Path:
    fontja = pytest.importorskip("matplotlib_fontja", reason="matplotlib-fontja (a dev extra) ships the CJK font")
    return Path(fontja.__file__).parent / "fonts/ipaexg.ttf"


def sign(text: str, font: Path | None = None, size: int = 40) -> Image.Image:
    image = Image.new("RGB", (640, 200), "white")
    ImageDraw.Draw(image).text((20, 70), text, fill="black", font=ImageFont.truetype(str(font or _font("DejaVuSans.ttf")), size))
    return image


@pytest.fixture(scope="module")
def reader(tmp_path_factory) -> TextReader:
    return TextReader(tmp_path_factory.mktemp("ocr") / "read_text.sqlite")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """The tool's default cache goes to this test's folder, never the user's."""
    monkeypatch.setenv("GEOGUIDE_READ_TEXT_CACHE", str(tmp_path / "ocr.sqlite"))


def _isos(res) -> list[str]:
    return [c.iso2 for c in res.countries]


def test_reads_german_and_ranks_german_speaking_countries(reader):
    res = read_text(sign("Einfahrt freihalten", size=48), "sha-de", reader)
    assert res.legible and "freihalten" in res.text
    assert res.languages[0].code == "de" and res.languages[0].probability > 0.8
    assert _isos(res)[0] == "DE" and {"AT", "CH"} <= set(_isos(res)[:4])
    assert sum(c.probability for c in res.countries) <= 1.0 + 1e-6


def test_reads_chinese_and_japanese_kanji(reader):
    font = _cjk_font()
    zh = read_text(sign("北京欢迎你", font, 48), "sha-zh", reader)
    assert zh.legible and "北京" in zh.text and _isos(zh)[0] == "CN" and "TW" in _isos(zh)[:4]
    # The shipped recogniser has no kana: it reads the kanji, and Japan comes second to China.
    ja = read_text(sign("東京駅 ようこそ 出口", font, 48), "sha-ja", reader)
    assert ja.legible and "東京" in ja.text and "JP" in _isos(ja)[:2]


def test_cyrillic_read_as_look_alikes_still_points_to_cyrillic_countries(reader):
    res = read_text(sign("Улица Ленина Москва"), "sha-ru", reader)
    assert res.legible and res.languages[0].code == "ru"
    assert _isos(res)[0] == "RU" and {"UA", "BY", "KZ"} & set(_isos(res)[:5])


def test_blank_image_has_no_legible_text(reader):
    res = read_text(Image.new("RGB", (640, 480), (128, 140, 150)), "sha-blank", reader)
    assert not res.legible and res.text == "" and res.countries == [] and res.note == "no legible text was found"


def test_corrupt_file_is_a_clear_error(tmp_path, reader):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    with pytest.raises(ImageLoadError, match="broken.jpg"):
        read_text_file(bad, reader)


def test_cached_per_image_and_bounded_in_time(tmp_path):
    cache = tmp_path / "c.sqlite"
    first = read_text(sign("Calle Mayor Salida"), "sha-es", TextReader(cache))
    again = TextReader(cache)  # a new process reading the same cache: the engine is never run
    again._ocr = lambda image: pytest.fail("OCR ran although the image was cached")
    assert read_text(sign("Calle Mayor Salida"), "sha-es", again).model_dump(exclude={"seconds"}) == \
        first.model_dump(exclude={"seconds"})
    slow = TextReader(None, timeout_s=0.05)
    slow._ocr = lambda image: time.sleep(1) or []
    res = read_text(sign("x"), "sha-slow", slow)
    assert isinstance(res, ToolError) and "longer than 0.05 s" in res.error


def test_language_rules():
    assert identify_languages("NO") == [] and identify_languages("0000 188") == []
    assert identify_languages("CATALYST") == []  # one word: a brand more often than a language
    assert identify_languages("00 电电电") == [] and identify_languages("美美") == []  # texture read as Han
    assert identify_languages("ようこそ")[0].code == "ja"
    spanish = countries_for([LanguageGuess(code="es", name="Spanish", probability=1.0)])
    assert {"ES", "MX"} <= {c.iso2 for c in spanish[:4]}
    latin = countries_for([LanguageGuess(code="la", name="Latin", probability=1.0)])
    assert [c.iso2 for c in latin] == ["IT", "VA"]  # Rome's monuments; CLDR gives Latin no country
    english = [LanguageGuess(code="en", name="English", probability=0.9)]
    assert "IN" in [c.iso2 for c in countries_for(english)[:3]]  # by population: India is second
    by_photos = countries_for(english, where={"US": 400, "GB": 200, "IN": 5, "FR": 50})
    assert [c.iso2 for c in by_photos][:2] == ["US", "GB"] and abs(sum(c.probability for c in by_photos) - 0.9) < 1e-3


# ------------------------------------------------------------------------------- the policies


@pytest.fixture
def german_sign_photo(tmp_path):
    path = tmp_path / "q_sign.jpg"
    sign("Einfahrt freihalten", size=48).save(path, quality=95)
    replay = tmp_path / "prior.csv"
    with open(replay, "w", newline="") as f:
        csv.writer(f).writerows([["IMG_ID", "LAT_pred", "LON_pred", "location", "success", "model_name"],
                                 ["q_sign.jpg", "", "", "", "False", "test-vlm"]])
    return path, replay


def test_rules_reads_the_text_first_when_there_is_no_prior(synthetic_index, german_sign_photo):
    path, replay = german_sign_photo
    # German: Germany 0.66, Austria 0.07, Switzerland 0.06: up to 0.7 of the text's probability.
    ctx = AgentContext(index=synthetic_index, backend=make_backend(f"replay:{replay}"),
                       config=AgentConfig(no_prior={"text_coverage": 0.7}))
    events = []
    pred = locate(ctx, path, on_event=events.append)
    assert pred.prior is None
    assert [e.tool for e in events if e.node == "tools"] == ["read_text", "search_submap"]
    assert [s.submap_id for s in pred.trail] == ["country:DE"]  # Austria has no references here
    assert "German" in pred.trail[0].reason and pred.tool_calls == 2
    assert pred.country == "DE" and haversine_km(pred.lat, pred.lon, BERLIN[1], BERLIN[2]) < 5
    off = AgentContext(index=synthetic_index, backend=make_backend(f"replay:{replay}"),
                       config=AgentConfig(no_prior={"read_text": False}))
    assert [s.submap_id for s in locate(off, path).trail] == ["global"]


def test_planner_calls_read_text(synthetic_index, fake_openai, german_sign_photo):
    from fakes.openai_server import reply_json, reply_tool_calls

    path, _ = german_sign_photo
    fake_openai.script(
        reply_json({"clues": [], "countries": [], "rationale": "a sign"}),
        reply_tool_calls(("read_text", {})),
        reply_tool_calls(("submit_location", {"lat": 52.52, "lon": 13.40, "evidence": "German sign"})),
    )
    backend = make_backend(f"openai-compatible:{fake_openai.base_url}:fake-vlm", timeout=5.0)
    ctx = AgentContext(index=synthetic_index, backend=backend, config=AgentConfig(policy="llm"))
    pred = locate(ctx, path)
    assert pred.source == "llm" and pred.country == "DE"
    planner = fake_openai.requests[1].body
    assert "read_text" in {t["function"]["name"] for t in planner["tools"]}
    assert "read_text" in planner["messages"][0]["content"]  # the prompt describes it
    reply = json.loads(next(m for m in fake_openai.requests[-1].body["messages"] if m.get("role") == "tool")["content"])
    assert reply["legible"] and reply["languages"][0]["code"] == "de" and reply["countries"][0]["iso2"] == "DE"


def _cand(i: int, lat: float, lon: float, sim: float) -> Candidate:
    return Candidate(ref_id=f"r{i}", lat=lat, lon=lon, country="XX", author=f"a{i}", similarity=sim)


def test_vote_follows_the_mass_not_the_single_best_match():
    # One lone best match in Sydney; many slightly weaker ones around Paris and Brussels.
    cands = [_cand(0, -33.87, 151.21, 0.62)]
    cands += [_cand(i, 48.85 + 0.3 * i, 2.35 + 0.2 * i, 0.60 - 0.001 * i) for i in range(1, 9)]
    cands += [_cand(20 + i, 40.7, -74.0 + i, 0.40) for i in range(5)]
    answer = vote(cands, NoPriorConfig())
    assert answer.source == "retrieval-vote" and answer.lat == cands[1].lat  # the best match of the mass
    assert "8 within 2500 km" in answer.why
    equal = vote(cands, NoPriorConfig(vote_temperature=0))  # unweighted: still the European mass
    assert haversine_km(equal.lat, equal.lon, 48.85, 2.35) < 600
    alone = vote(cands[:1], NoPriorConfig())
    assert (alone.lat, alone.lon) == (cands[0].lat, cands[0].lon)
