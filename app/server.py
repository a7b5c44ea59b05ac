"""``geoguide serve``: a web page and an HTTP API over the one compiled graph, with the index and
models loaded once.

A thin shell like the CLI: every photo runs ``agent.graph.locate`` (through the chat session
that keeps it for follow-ups) with a per-photo context that shares the index, the backends and
one serialised descriptor (the eval runner's pattern), so concurrent requests never share
mutable state. Uploads are checked before anything else runs: bytes first (413), then the same
image validation as the CLI (422). Nothing from a request reaches the file system except through
index lookups (a thumbnail is found by reference id in the index table) and session ids (128-bit
random hex, checked against a pattern). Binding beyond 127.0.0.1 needs a bearer token (or an
explicit --insecure); every POST is rate-limited per client, and so are failed tokens. Requests
for other host names (DNS rebinding) and state-changing requests from other origins are refused
(``app.doors``); every form field is capped.

Routes: ``GET /`` (the page, ``app/web/``), ``POST /api/locate`` (the prediction JSON of
``geoguide locate --json``; the session id in ``X-Geoguide-Session``), ``POST
/api/locate/stream`` (the agent's steps as Server-Sent Events, then the session), ``GET
/api/sessions/{id}``, ``POST /api/sessions/{id}/messages``, ``GET /api/sessions/{id}/photo``,
``GET /api/health``, ``GET /api/references/{ref_id}/thumbnail``, ``GET /api/countries.geojson``.
"""

from __future__ import annotations

import hmac
import io
import json
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image
from pydantic import BaseModel, Field

from geoguide.agent.backends.errors import ModelServiceError
from geoguide.agent.context import AgentContext, SerialDescriptor
from geoguide.agent.session_db import SessionDatabaseError
from geoguide.agent.state import Event, Prediction
from geoguide.app.doors import Doors, RateLimiter
from geoguide.app.web_sessions import Busy, SessionStore, SessionView, Truth, UnknownSession
from geoguide.core.atomic import DiskFull
from geoguide.core.images import ImageLoadError, decode_image, load_image

MAX_UPLOAD_BYTES = 20 * 1024 * 1024  # a 640-px benchmark photo is ~100 KB; a phone photo ~5 MB
THUMBNAIL_SIDE = 256
WEB_DIR = Path(__file__).with_name("web")
AUTH_FAILURES_PER_MINUTE = 10  # wrong tokens a client may send a minute: a person mistyping, not a loop
MAX_TEXT_CHARS = 2000  # a note with a photo or a follow-up: a paragraph, not a file
MAX_FIELD_CHARS = 200  # a photographer's id, a file name


class Health(BaseModel):
    ok: bool = True
    n_references: int
    descriptor: str
    vlm: str
    planner: str | None
    policy: str
    labelled_photos: int = Field(0, description="photos whose true location is known (serve --labels)")


class Question(BaseModel):
    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)


# The page's own policy: scripts, styles, images and requests from this server only (the map is SVG
# drawn by map.js; photos are blob: URLs of the user's own file); no inline script, no framing.
PAGE_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
            "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
# /docs and /redoc start Swagger UI / ReDoc with an inline script (FastAPI's own pages): allowed there only.
DOCS_CSP = PAGE_CSP.replace("script-src 'self'", "script-src 'self' 'unsafe-inline'").replace(
    "style-src 'self'", "style-src 'self' 'unsafe-inline'")
DOCS_PATHS = ("/docs", "/redoc")


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")


def is_public(path: str) -> bool:
    """The page and its static code: nothing can be done with them without the token, which they ask for."""
    return path == "/" or path.startswith("/static/")


class Guard:
    """ASGI middleware in front of every route: the bearer token (when the server has one) on every
    path but the page and its code, checked in one place so that a new route cannot forget it, and
    the security headers (Content-Security-Policy, nosniff, no referrer, no framing) on every answer."""

    def __init__(self, app, token: str | None, max_pending: int = 16, doors: Doors | None = None,
                 auth_per_minute: int = AUTH_FAILURES_PER_MINUTE) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode() if token else None
        self.doors = doors or Doors()
        self.auth_failures = RateLimiter(auth_per_minute)
        # POSTs being received or run at once (each may hold an upload of up to MAX_UPLOAD_BYTES):
        # one more is refused at once, before its body is read, so memory stays bounded under a flood.
        self.max_pending = max_pending
        self.pending = 0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        csp = DOCS_CSP if path.startswith(DOCS_PATHS) else PAGE_CSP
        extra = [(b"content-security-policy", csp.encode()), (b"x-content-type-options", b"nosniff"),
                 (b"referrer-policy", b"no-referrer"), (b"x-frame-options", b"DENY")]

        async def with_headers(message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        async def refuse(status: int, detail: str, header: tuple[bytes, bytes]) -> None:
            body = json.dumps({"detail": detail}).encode()
            await with_headers({"type": "http.response.start", "status": status, "headers": [
                (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), header]})
            await send({"type": "http.response.body", "body": body})

        headers = dict(scope.get("headers", []))
        host = headers.get(b"host", b"").decode("latin-1")
        why = self.doors.host_refusal(host) or self.doors.origin_refusal(
            scope.get("method", "GET"), host, _text(headers.get(b"origin")), _text(headers.get(b"sec-fetch-site")))
        if why:
            await refuse(403, why, (b"vary", b"Origin"))
            return
        if self.expected is not None and not is_public(path):
            client = (scope.get("client") or ("unknown",))[0]
            wait = self.auth_failures.wait(client)  # before the comparison: a guesser learns nothing more
            if wait:
                await refuse(429, f"too many failed tokens from this client: retry in {wait:.0f} s",
                             (b"retry-after", str(max(1, round(wait))).encode()))
                return
            if not hmac.compare_digest(headers.get(b"authorization", b""), self.expected):
                self.auth_failures.take(client)
                await refuse(401, "a bearer token is required: Authorization: Bearer TOKEN",
                             (b"www-authenticate", b"Bearer"))
                return
        if scope.get("method") != "POST":
            await self.app(scope, receive, with_headers)
            return
        if self.pending >= self.max_pending:  # one event loop: no lock needed around the counter
            await refuse(503, f"the server is busy ({self.pending} requests in progress); retry shortly",
                         (b"retry-after", b"2"))
            return
        self.pending += 1
        try:
            await self.app(scope, receive, with_headers)
        finally:
            self.pending -= 1


def create_app(ctx: AgentContext, *, token: str | None = None, max_upload_bytes: int = MAX_UPLOAD_BYTES,
               state_dir: Path | None = None, state_url: str | None = None, truth: dict[str, Truth] | None = None,
               rate_per_minute: int = 60, max_runs: int = 4, max_pending: int = 16,
               busy_wait_s: float = 30.0, doors: Doors | None = None,
               auth_per_minute: int = AUTH_FAILURES_PER_MINUTE) -> FastAPI:
    """The FastAPI app around one opened context (index, backends, config).

    Load is bounded twice: at most ``max_pending`` POSTs are received or run at once (one more gets
    503 before its body is read), and at most ``max_runs`` agent runs go at once (a request waits up
    to ``busy_wait_s`` for a slot, then 503); each client also gets ``rate_per_minute`` POSTs (429)."""
    import tempfile

    from fastapi_offline import FastAPIOffline

    # /docs and /redoc with their scripts from the package: FastAPI's own pages load them from a CDN.
    app = FastAPIOffline(title="geoguide", summary="Where was this photo taken?")
    app.add_middleware(GZipMiddleware, minimum_size=2048)
    app.add_middleware(Guard, token=token, max_pending=max_pending, doors=doors, auth_per_minute=auth_per_minute)  # added last: the outermost layer, before anything else runs
    descriptor = SerialDescriptor(lambda: ctx.descriptor or ctx.index.descriptor())
    if state_dir is None:  # sessions for this app's life only: the folder goes with the app (or at exit)
        app.state.scratch = tempfile.TemporaryDirectory(prefix="geoguide-serve-", ignore_cleanup_errors=True)
        state_dir = Path(app.state.scratch.name)
    store = SessionStore(ctx, Path(state_dir), descriptor, truth, state_url=state_url, max_runs=max_runs,
                         wait_s=busy_wait_s)
    app.state.sessions = store  # closed by whoever made the app (``serve``), after the server stops
    limiter = RateLimiter(rate_per_minute)

    def limited(request: Request) -> None:
        wait = limiter.take(request.client.host if request.client else "unknown")
        if wait:
            raise HTTPException(429, f"too many requests from this client: retry in {wait:.0f} s",
                                headers={"Retry-After": str(max(1, round(wait)))})

    @app.exception_handler(Busy)
    def busy(request: Request, e: Busy) -> JSONResponse:
        return JSONResponse({"detail": str(e)}, status_code=503, headers={"Retry-After": "5"})

    @app.exception_handler(DiskFull)
    def disk_full(request: Request, e: DiskFull) -> JSONResponse:
        """507 Insufficient Storage: the upload or the turn was not kept (nothing half-written)."""
        return JSONResponse({"detail": str(e)}, status_code=507)

    @app.exception_handler(ModelServiceError)
    @app.exception_handler(SessionDatabaseError)
    def service_unusable(request: Request, e: ModelServiceError | SessionDatabaseError) -> JSONResponse:
        """The CLI's exit 3: the model server or the session database is down or misconfigured;
        the turn was not kept."""
        return JSONResponse({"detail": str(e)}, status_code=503)

    costly = [Depends(limited)]  # the token is checked by ``Guard`` for every route

    def read_upload(image: UploadFile) -> tuple[bytes, str]:
        data = image.file.read(max_upload_bytes + 1)
        if len(data) > max_upload_bytes:
            raise HTTPException(413, f"the photo is larger than {max_upload_bytes // (1024 * 1024)} MB")
        if not data:
            raise HTTPException(422, "the upload is empty")
        return data, (Path(image.filename or "upload").name or "upload")[-MAX_FIELD_CHARS:]

    def not_a_photo(e: ImageLoadError, name: str) -> HTTPException:
        text = str(e)
        cut = text.find(": ")  # the private upload path comes first in load_image's messages
        return HTTPException(422, f"{name}: {text[cut + 2:] if cut >= 0 else text}")

    @app.get("/api/health", response_model=Health)
    def health() -> Health:
        m = ctx.index.manifest
        return Health(n_references=m.n_references, descriptor=m.descriptor.name, vlm=ctx.backend.spec,
                      planner=ctx.planner.spec if ctx.planner is not None else None, policy=ctx.config.policy,
                      labelled_photos=len(store.truth))

    @app.post("/api/locate", response_model=Prediction, dependencies=costly)
    def locate_photo(response: Response, image: Annotated[UploadFile, File()],
                     exclude_author: Annotated[str | None, Form(max_length=MAX_FIELD_CHARS)] = None,
                     text: Annotated[str | None, Form(max_length=MAX_TEXT_CHARS)] = None) -> Prediction:
        data, name = read_upload(image)
        started = time.perf_counter()
        try:
            view = store.locate(data, name, exclude_author=exclude_author, text=text)
        except ImageLoadError as e:  # locate validates the photo before any model is called
            raise not_a_photo(e, name) from None
        response.headers["X-Geoguide-Session"] = view.session_id
        response.headers["Server-Timing"] = f"locate;dur={1000 * (time.perf_counter() - started):.1f}"
        refused_model(view)
        return view.prediction

    @app.post("/api/locate/stream", dependencies=costly,
              responses={200: {"content": {"text/event-stream": {}},
                               "description": "events `step` (the agent's steps), then `session` or `error`"}})
    def locate_stream(image: Annotated[UploadFile, File()],
                      exclude_author: Annotated[str | None, Form(max_length=MAX_FIELD_CHARS)] = None,
                      text: Annotated[str | None, Form(max_length=MAX_TEXT_CHARS)] = None) -> StreamingResponse:
        data, name = read_upload(image)
        try:
            decode_image(data, name)  # a bad upload is a 422, not an event in a 200 stream
        except ImageLoadError as e:
            raise HTTPException(422, str(e)) from None
        events: queue.Queue = queue.Queue()

        def work() -> None:
            try:
                view = store.locate(data, name, exclude_author=exclude_author, text=text, on_event=events.put)
                refused_model(view)
                events.put(("session", view.model_dump_json()))
            except HTTPException as e:
                events.put(("error", json.dumps({"status": e.status_code, "detail": e.detail})))
            except (ModelServiceError, SessionDatabaseError, Busy) as e:
                events.put(("error", json.dumps({"status": 503, "detail": str(e)})))
            except DiskFull as e:
                events.put(("error", json.dumps({"status": 507, "detail": str(e)})))
            except Exception as e:  # the stream has started: the failure is its last event
                events.put(("error", json.dumps({"detail": str(e) or type(e).__name__})))

        threading.Thread(target=work, name="geoguide-locate", daemon=True).start()
        return StreamingResponse(_sse(events), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    def session_or_404(fn, *args):
        try:
            return fn(*args)
        except UnknownSession as e:
            raise HTTPException(404, str(e)) from None

    @app.get("/api/sessions/{session_id}", response_model=SessionView)
    def get_session(session_id: str) -> SessionView:
        return session_or_404(store.view, session_id)

    @app.post("/api/sessions/{session_id}/messages", response_model=SessionView, dependencies=costly)
    def ask(session_id: str, question: Question) -> SessionView:
        return session_or_404(store.ask, session_id, question.text)

    @app.get("/api/sessions/{session_id}/photo")
    def session_photo(session_id: str) -> Response:
        return jpeg(session_or_404(store.photo, session_id), 1024, f"the photo of session {session_id!r}")

    @app.get("/api/references/{ref_id}/thumbnail",
             responses={200: {"content": {"image/jpeg": {}}}})
    def thumbnail(ref_id: str) -> Response:
        row = ctx.index.row_of(ref_id)  # the index table is the only way to a file
        if row is None:
            raise HTTPException(404, f"no reference {ref_id!r} in the index")
        path = Path(ctx.index.row(row)["path"])
        if not reference_photo_allowed(path, ctx.index.manifest.image_roots):
            raise HTTPException(404, f"the photo of reference {ref_id!r} lies outside the index's image folders")
        return jpeg(path, THUMBNAIL_SIDE, f"the photo of reference {ref_id!r}")

    @app.get("/api/countries.geojson")
    def countries() -> JSONResponse:
        from geoguide.geo.outlines import countries_geojson

        return JSONResponse(countries_geojson(), media_type="application/geo+json",
                            headers={"Cache-Control": "public, max-age=86400"})

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(WEB_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")
    return app


def reference_photo_allowed(path: Path, roots: list[str]) -> bool:
    """Whether the server may read a reference's photo: inside one of the folders the index was
    built and updated from, every link followed (a link in the image folder to /etc/passwd is not a
    photo to serve). Indices from before 0.2 recorded no folders: the file must at least not be a
    link out of its own folder."""
    from geoguide.indices.photosets import inside

    return any(inside(path, root) for root in roots) if roots else inside(path, path.parent)


def refused_model(view: SessionView) -> None:
    """503 when the model could not be used and the server was not started with ``--fallback
    retrieval``: the CLI's exit 3. The session (and its retrieval-only answer) is kept."""
    failure = view.prediction.model_failure() if view.prediction else None
    if failure:
        raise HTTPException(503, f"{failure}; start the server with --fallback retrieval to accept answers from "
                                 f"retrieval alone (session {view.session_id})",
                            headers={"X-Geoguide-Session": view.session_id})


def jpeg(path: Path, side: int, what: str) -> Response:
    try:
        img = load_image(path)
    except (ImageLoadError, OSError):
        raise HTTPException(404, f"{what} cannot be read") from None
    img.thumbnail((side, side))
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=85)
    return Response(out.getvalue(), media_type="image/jpeg")


def _sse(events: queue.Queue) -> Iterator[bytes]:
    """Server-Sent Events from the worker's queue: ``step`` per agent event, a comment every 10 s
    so proxies keep the connection, and one closing ``session`` or ``error``."""
    while True:
        try:
            item = events.get(timeout=10)
        except queue.Empty:
            yield b": working\n\n"
            continue
        if isinstance(item, Event):
            yield f"event: step\ndata: {item.model_dump_json()}\n\n".encode()
            continue
        kind, payload = item
        yield f"event: {kind}\ndata: {payload}\n\n".encode()
        return


def warm_up(ctx: AgentContext) -> None:
    """Load what the first request would otherwise pay for (the descriptor model, the country
    polygons and neighbours, the gazetteer, the map outlines): measured 7.9 s on the shared
    split's effnet index."""
    from geoguide.geo import country_at, neighbours
    from geoguide.geo.outlines import countries_geojson
    from geoguide.tools.gazetteer import ReverseGeocodeArgs, reverse_geocode

    ctx.index.descriptor().extract([Image.new("RGB", (64, 64))])
    country_at(48.85, 2.35)
    neighbours("FR")
    reverse_geocode(ReverseGeocodeArgs(lat=48.85, lon=2.35))
    countries_geojson()


def check_binding(host: str, token: str | None, insecure: bool) -> list[str]:
    """Refuse an open binding without a token; returns warnings to print."""
    from geoguide.core.errors import GeoguideError

    local = host in ("127.0.0.1", "localhost", "::1")
    if local or token:
        return []
    if not insecure:
        raise GeoguideError(f"binding {host} exposes the API beyond this machine: pass --token TOKEN "
                            "(checked on every call) or --insecure to accept the risk")
    return [f"serving on {host} without a token: anyone who can reach it can use the models and the index"]
