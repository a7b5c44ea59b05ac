"""The page of ``geoguide serve`` in a real headless Chromium (Debian's ``chromium``, driven by
Playwright with ``executable_path``: Playwright's own browser download does not work here).

A real uvicorn server on 127.0.0.1 serves the real app over the synthetic index with a replayed
prior; the browser uploads a photo, waits for the streamed answer, checks the map draws the
prior, the searched country, the candidates, the answer and the truth, opens a reference
thumbnail, asks a follow-up, reloads the session from the URL, and shrinks to a phone's width.
Screenshots go to ``build/test-artifacts/browser`` (``$GEOGUIDE_ARTIFACTS`` to move them).
``make test`` installs Chromium (apt) and Playwright (pip); without them these tests skip and
say which is missing.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import pytest

from geoguide.agent.backends import make_backend
from geoguide.agent.config import AgentConfig
from geoguide.agent.context import AgentContext
from geoguide.agent.profile import KEYS, CalibrationProfile, GroupProfile
from geoguide.app.server import create_app
from geoguide.app.web_sessions import Truth
from tests.serving import serving
from tests.synthetic import place_image

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(os.environ.get("GEOGUIDE_ARTIFACTS", Path(__file__).resolve().parents[2] / "build" / "test-artifacts"))
PARIS = (48.8566, 2.3522)

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (make setup installs it)")
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH: `apt-get install chromium` (make test does it as root)"),
]


@pytest.fixture(scope="module")
def context(synthetic_index, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browser")
    prior = tmp / "prior.csv"
    prior.write_text("IMG_ID,LAT_pred,LON_pred,location,success,model_name\n"
                     f"q_paris.jpg,{PARIS[0]},{PARIS[1]},Paris,True,gemini\n")
    # A calibration profile (identity recalibration, radius = twice r50) so the page draws the radius.
    profile = CalibrationProfile(coverage=0.9, n=100, groups=[GroupProfile(
        group="all", n=100, platt={k: [0.0, 1.0] for k in KEYS}, score_quantile=math.log(2))])
    return AgentContext(index=synthetic_index, backend=make_backend(f"replay:{prior}"), config=AgentConfig(),
                        profile=profile), tmp


@pytest.fixture(scope="module")
def server(context):
    ctx, tmp = context
    app = create_app(ctx, state_dir=tmp / "state", truth={"q_paris.jpg": Truth(lat=48.87, lon=2.33)})
    photo = tmp / "q_paris.jpg"
    place_image(0, variant=7).save(photo, quality=92)
    with serving(app) as url:
        yield url, photo


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


def _wait_state(page, *states: str, timeout_ms: int = 60_000) -> str:
    cond = " || ".join(f"document.body.dataset.state === '{s}'" for s in (*states, "failed"))
    page.wait_for_function(f"() => {cond}", timeout=timeout_ms)
    state = page.evaluate("document.body.dataset.state")
    assert state != "failed", page.inner_text("#error")
    return state


def test_locate_a_photo_see_the_evidence_and_ask_a_follow_up(server, browser):
    url, photo = server
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("request", lambda r: None if r.url.startswith((url, "data:", "blob:")) else problems.append(r.url))

    page.goto(url)
    page.wait_for_function("() => document.body.dataset.state === 'ready'")
    assert page.locator("#land path").count() >= 230  # the offline outlines
    page.set_input_files("#file", str(photo))
    _wait_state(page, "located")
    page.screenshot(path=str(ARTIFACTS / "browser-desktop.png"))

    assert page.locator("#steps li").count() >= 3
    assert "perceive" in page.inner_text("#steps")
    assert page.locator("#prior-layer .prior-point").count() == 1
    assert page.locator("#land path.searched[data-iso2='FR']").count() == 1
    assert page.locator("#candidates .candidate").count() >= 3
    assert page.locator("#marks .answer-mark").count() == 1
    assert page.locator("#marks .truth-mark").count() == 1 and page.locator("#truth-line line").count() == 1
    assert "France" in page.inner_text("#answer-place") and "km off" in page.inner_text("#answer-truth")
    why = page.inner_text("#answer-why")
    assert why.startswith("Confidence") and "P(within): 1 km" in why and "90% radius" in why and ". the " not in why  # every sentence starts a sentence
    assert page.locator("#marks .answer-radius").count() == 1  # the profile's radius, drawn
    assert page.evaluate("document.querySelector('#marks').lastElementChild.classList.contains('answer-mark')")
    assert "{'" not in page.inner_text("#steps")  # no Python repr reaches a person

    page.locator("#candidates .candidate").first.dispatch_event("click")
    page.wait_for_function("() => document.querySelector('#popup img').naturalWidth > 0")
    assert page.is_visible("#popup") and "similarity" in page.inner_text("#popup figcaption")
    page.screenshot(path=str(ARTIFACTS / "browser-candidate.png"))

    turns = page.locator("#chat li").count()
    page.fill("#question", "Why do you think so?")
    page.click("#ask button")
    _wait_state(page, "answered")
    assert page.locator("#chat li").count() == turns + 2
    assert page.locator("#chat li.assistant").last.inner_text().strip()
    page.screenshot(path=str(ARTIFACTS / "browser-follow-up.png"))

    session_url = page.url
    assert "#s=" in session_url
    page.goto("about:blank")
    page.goto(session_url)  # a reload (or a restarted server) finds the session from the URL
    page.wait_for_function("() => document.body.dataset.state === 'ready'")
    assert page.locator("#chat li").count() == turns + 2 and page.locator("#marks .answer-mark").count() == 1

    page.set_viewport_size({"width": 390, "height": 844})
    page.wait_for_timeout(300)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    box = page.locator("#map").bounding_box()
    assert box and box["width"] >= 350 and box["height"] >= 250
    page.screenshot(path=str(ARTIFACTS / "browser-phone.png"))
    assert not problems, problems  # no script errors, and nothing fetched beyond the server


def test_a_photo_that_is_not_one_shows_the_servers_reason(server, browser, tmp_path):
    url, _ = server
    bad = tmp_path / "notes.jpg"
    bad.write_text("not a photo")
    page = browser.new_page()
    page.goto(url)
    page.wait_for_function("() => document.body.dataset.state === 'ready'")
    page.set_input_files("#file", str(bad))
    page.wait_for_function("() => document.body.dataset.state === 'failed'")
    assert "notes.jpg" in page.inner_text("#error") and page.is_hidden("#answer")


def test_the_api_docs_render_offline(server, browser):
    url, _ = server
    page = browser.new_page()
    outside: list[str] = []
    page.on("request", lambda r: None if r.url.startswith((url, "data:", "blob:")) else outside.append(r.url))
    page.goto(url + "docs")
    page.wait_for_selector(".swagger-ui .opblock", timeout=20_000)
    assert "/api/locate/stream" in page.inner_text(".swagger-ui")
    assert not outside, outside


def test_a_token_protected_server_asks_for_the_token(context, browser):
    ctx, tmp = context
    with serving(create_app(ctx, token="s3cret", state_dir=tmp / "token-state")) as url:
        page = browser.new_page()
        page.goto(url)
        page.wait_for_selector("#token-button:not([hidden])")
        assert "bearer token" in page.inner_text("#error")
        page.on("dialog", lambda d: d.accept("s3cret"))
        page.click("#token-button")
        page.wait_for_function("() => document.body.dataset.state === 'ready'")
        assert page.locator("#land path").count() >= 230 and page.is_hidden("#error")


HOSTILE = '"><img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>'


def test_hostile_strings_from_users_photos_and_models_stay_text(context, browser, tmp_path):
    """A file name, a model's reply (the replayed prior's rationale) and a follow-up, all holding
    markup: the page shows them as text, runs none of it, and the server sends a CSP that would
    block inline script anyway."""
    ctx, _ = context
    name = f"q{HOSTILE}.jpg".replace("/", "_")
    photo = tmp_path / name
    place_image(0, variant=7).save(photo, quality=92)
    prior = tmp_path / "hostile-prior.csv"
    with prior.open("w", newline="") as f:
        import csv

        csv.writer(f).writerows([["IMG_ID", "LAT_pred", "LON_pred", "location", "success", "model_name"],
                                 [name, PARIS[0], PARIS[1], f"Paris {HOSTILE}", "True", f"m{HOSTILE}"]])
    hostile_ctx = AgentContext(index=ctx.index, backend=make_backend(f"replay:{prior}"), config=AgentConfig())
    with serving(create_app(hostile_ctx, state_dir=tmp_path / "state")) as url:
        page = browser.new_page()
        dialogs: list[str] = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        response = page.goto(url)
        assert "script-src 'self'" in response.headers["content-security-policy"]
        page.wait_for_function("() => document.body.dataset.state === 'ready'")
        page.set_input_files("#file", str(photo))
        _wait_state(page, "located")
        page.fill("#question", f"why not {HOSTILE}?")
        page.click("#ask button")
        _wait_state(page, "answered")
        page.fill("#question", HOSTILE)
        page.click("#ask button")
        _wait_state(page, "answered")
        body = page.inner_text("body")
        assert "<img src=x" in body or "&lt;img" not in body  # shown as text, not parsed
        assert "<img src=x" in page.inner_text("#chat")
        assert page.evaluate("window.__pwned") is None and not dialogs
        assert page.locator("img[src='x']").count() == 0 and page.locator("body script:not([src])").count() == 0
