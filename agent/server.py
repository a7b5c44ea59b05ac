"""``geoguide serve``: the HTTP API over the one compiled graph, with the index and models loaded once.

A thin shell like the CLI: every request runs ``agent.graph.locate`` with a per-request context
that shares the index, the backends and one serialised descriptor (the eval runner's pattern), so
concurrent requests never share mutable state. Uploads are checked before anything else runs:
bytes first (413), then the same image validation as the CLI (422). Nothing from a request reaches
the file system except through index lookups: a thumbnail is found by reference id in the index
table, never by a path. Binding beyond 127.0.0.1 needs a bearer token (or an explicit --insecure).

This is the API slice of the web issue; the page, streaming and chat sessions come next.
"""

from __future__ import annotations

import hmac
import io
import secrets
import tempfile
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import Response
from PIL import Image
from pydantic import BaseModel

from agent.context import AgentContext
from agent.graph import locate
from agent.state import Prediction
from indices.images import ImageLoadError, load_image

MAX_UPLOAD_BYTES = 20 * 1024 * 1024  # a 640-px benchmark photo is ~100 KB; a phone photo ~5 MB
THUMBNAIL_SIDE = 256


class Health(BaseModel):
    ok: bool = True
    n_references: int
    descriptor: str
    vlm: str
    planner: str | None
    policy: str


def create_app(ctx: AgentContext, *, token: str | None = None, max_upload_bytes: int = MAX_UPLOAD_BYTES) -> FastAPI:
    """The FastAPI app around one opened context (index, backends, config)."""
    from eval.runner import SerialDescriptor, sample_context

    app = FastAPI(title="geoguide", summary="Where was this photo taken?")
    descriptor = SerialDescriptor(lambda: ctx.descriptor or ctx.index.descriptor())
    uploads = Path(tempfile.mkdtemp(prefix="geoguide-uploads-"))

    def authorised(request: Request) -> None:
        if token is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise HTTPException(401, "a bearer token is required: Authorization: Bearer TOKEN",
                                headers={"WWW-Authenticate": "Bearer"})

    guarded = [Depends(authorised)]

    @app.get("/api/health", response_model=Health, dependencies=guarded)
    def health() -> Health:
        m = ctx.index.manifest
        return Health(n_references=m.n_references, descriptor=m.descriptor.name, vlm=ctx.backend.spec,
                      planner=ctx.planner.spec if ctx.planner is not None else None, policy=ctx.config.policy)

    @app.post("/api/locate", response_model=Prediction, dependencies=guarded)
    def locate_photo(image: Annotated[UploadFile, File()], exclude_author: Annotated[str | None, Form()] = None,
                     text: Annotated[str | None, Form()] = None) -> Prediction:
        data = image.file.read(max_upload_bytes + 1)
        if len(data) > max_upload_bytes:
            raise HTTPException(413, f"the photo is larger than {max_upload_bytes // (1024 * 1024)} MB")
        if not data:
            raise HTTPException(422, "the upload is empty")
        path = uploads / f"{secrets.token_hex(16)}.img"
        path.write_bytes(data)
        try:
            one = sample_context(ctx, _Upload(image.filename, exclude_author), True, descriptor)
            pred = locate(one, path, image_id=Path(image.filename or path.name).name, user_text=text)
        except ImageLoadError as e:  # locate validates the photo before any model is called
            raise HTTPException(422, str(e).replace(str(path), image.filename or "upload")) from None
        finally:
            path.unlink(missing_ok=True)
        return pred.model_copy(update={"image": image.filename or "upload"})

    @app.get("/api/references/{ref_id}/thumbnail", dependencies=guarded,
             responses={200: {"content": {"image/jpeg": {}}}})
    def thumbnail(ref_id: str) -> Response:
        row = ctx.index.row_of(ref_id)  # the index table is the only way to a file
        if row is None:
            raise HTTPException(404, f"no reference {ref_id!r} in the index")
        try:
            img = load_image(ctx.index.row(row)["path"])
        except (ImageLoadError, OSError):
            raise HTTPException(404, f"the photo of reference {ref_id!r} cannot be read") from None
        img.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
        out = io.BytesIO()
        img.save(out, format="JPEG", quality=85)
        return Response(out.getvalue(), media_type="image/jpeg")

    return app


class _Upload:
    """What ``sample_context`` reads of a sample: the photographer to exclude (if any) and an id
    for the self-match guard."""

    def __init__(self, filename: str | None, author: str | None = None) -> None:
        self.author = author
        self.image_id = Path(filename or "upload").name


def warm_up(ctx: AgentContext) -> None:
    """Load what the first request would otherwise pay for (the descriptor model, the country
    polygons and neighbours, the gazetteer): measured 7.9 s on the shared split's effnet index."""
    from indices.geography import country_at, neighbours
    from tools.gazetteer import ReverseGeocodeArgs, reverse_geocode

    ctx.index.descriptor().extract([Image.new("RGB", (64, 64))])
    country_at(48.85, 2.35)
    neighbours("FR")
    reverse_geocode(ReverseGeocodeArgs(lat=48.85, lon=2.35))


def check_binding(host: str, token: str | None, insecure: bool) -> list[str]:
    """Refuse an open binding without a token; returns warnings to print."""
    from indices.errors import GeoguideError

    local = host in ("127.0.0.1", "localhost", "::1")
    if local or token:
        return []
    if not insecure:
        raise GeoguideError(f"binding {host} exposes the API beyond this machine: pass --token TOKEN "
                            "(checked on every call) or --insecure to accept the risk")
    return [f"serving on {host} without a token: anyone who can reach it can use the models and the index"]
