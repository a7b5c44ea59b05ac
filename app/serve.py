"""``geoguide serve``: the web page and the HTTP API (``app.server``), in one long-lived process
or ``--workers N`` (uvicorn's supervisor: one listening socket, N processes each with its own
context over the same memory-mapped index, sessions shared through the session database)."""

from __future__ import annotations

import atexit
import os
from pathlib import Path
from typing import Annotated

import typer
from pydantic import BaseModel, Field

from geoguide.agent.settings import ContextSpec, default_cache_path
from geoguide.app.options import AgentOptions, agent_options

commands = typer.Typer()

WORKER_SETTINGS = "GEOGUIDE_SERVE_SETTINGS"  # how the supervisor hands ``ServeSettings`` to its workers


class ServeSettings(BaseModel):
    """Everything one server process needs besides its socket: what ``--workers`` gives each worker."""

    spec: ContextSpec
    host: str
    token: str | None = None
    state_dir: Path
    state_url: str | None = Field(None, description="postgresql:// session database; default SQLite in state_dir")
    labels: Path | None = None
    rate_limit: int = 60
    max_runs: int = 4
    allow_host: list[str] = Field(default_factory=list)
    allow_origin: list[str] = Field(default_factory=list)


def build_app(settings: ServeSettings, *, warm: bool = True):
    """The opened context and the app over it, warmed (the first request pays nothing extra).

    ``warm`` False: only what can fail is opened (the index, the models, the descriptor's weights,
    the session database), for ``--workers``' supervisor, which answers nothing: warmed and kept, it
    held as much memory as a worker for its whole life (524 MB on the shared split's effnet index;
    now 124 MB beside workers of 567 MB, ``benchmarks/serve.py``)."""
    from geoguide.agent.factory import build_context
    from geoguide.app.doors import Doors
    from geoguide.app.server import create_app, warm_up
    from geoguide.app.web_sessions import Truth

    truth = None
    if settings.labels is not None:
        from geoguide.indices.photosets import load_dataset

        truth = {s.image_id: Truth(lat=s.lat, lon=s.lon, author=s.author)
                 for s in load_dataset("csv", labels=settings.labels).samples}
    ctx = build_context(settings.spec)
    try:
        if warm:
            warm_up(ctx)
        else:
            ctx.index.descriptor()  # its weights load (or fail) here
        app = create_app(ctx, token=settings.token, state_dir=settings.state_dir, state_url=settings.state_url,
                         truth=truth, rate_per_minute=settings.rate_limit, max_runs=settings.max_runs,
                         max_pending=4 * settings.max_runs,
                         doors=Doors(settings.host, allow_hosts=settings.allow_host, allow_origins=settings.allow_origin))
    except BaseException:
        ctx.close()
        raise
    return ctx, app


def worker_app():
    """One ``--workers`` process's app (uvicorn calls this factory in each worker it starts)."""
    ctx, app = build_app(ServeSettings.model_validate_json(os.environ[WORKER_SETTINGS]))
    atexit.register(ctx.close)
    atexit.register(app.state.sessions.close)
    return app


@commands.command("serve")
@agent_options
def serve_cmd(
    host: Annotated[str, typer.Option("--host", help="address to bind; beyond 127.0.0.1 needs --token or --insecure")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535)] = 8000,
    token: Annotated[str | None, typer.Option("--token", envvar="GEOGUIDE_TOKEN", help="bearer token required on every API call")] = None,
    insecure: Annotated[bool, typer.Option("--insecure", help="allow a non-local binding without a token")] = False,
    state_dir: Annotated[Path | None, typer.Option("--state-dir", help="sessions and their photos (default ~/.cache/geoguide/serve); they survive a restart")] = None,
    state_url: Annotated[str | None, typer.Option("--state-url", envvar="GEOGUIDE_STATE_URL", help="keep sessions in this database instead, e.g. postgresql://user@host/db (servers on several machines share it)")] = None,
    workers: Annotated[int, typer.Option("--workers", min=1, help="server processes on this port (one memory-mapped index; each has its own --max-runs and --rate-limit)")] = 1,
    labels: Annotated[Path | None, typer.Option("--labels", help="labels CSV of an eval set: its photos get their true location on the map and their photographer excluded")] = None,
    rate_limit: Annotated[int, typer.Option("--rate-limit", min=1, help="POST requests per minute per client")] = 60,
    max_runs: Annotated[int, typer.Option("--max-runs", min=1, help="agent runs at once; more wait up to 30 s, then 503")] = 4,
    allow_host: Annotated[list[str] | None, typer.Option("--allow-host", help="another host name to answer to (a reverse proxy's public name; repeatable; '*': any). Always: localhost, IP addresses and --host")] = None,
    allow_origin: Annotated[list[str] | None, typer.Option("--allow-origin", help="another origin whose pages may POST, e.g. https://geo.example.org (repeatable); the server's own always may")] = None,
    *,
    opts: AgentOptions,
) -> None:
    """The web page (http://HOST:PORT/) and the HTTP API (OpenAPI at /docs)."""
    from geoguide.core.extras import require

    for module in ("fastapi", "uvicorn", "multipart", "fastapi_offline"):
        require(module, "serve", "geoguide serve")
    import uvicorn

    from geoguide.app.server import check_binding

    for warning in check_binding(host, token, insecure):
        typer.echo(f"geoguide: warning: {warning}", err=True)
    settings = ServeSettings(spec=opts.context_spec(), host=host, token=token,
                             state_dir=state_dir or default_cache_path().with_name("serve"), state_url=state_url,
                             labels=labels, rate_limit=rate_limit, max_runs=max_runs,
                             allow_host=allow_host or [], allow_origin=allow_origin or [])
    if workers > 1:
        # Opened here first all the same: a bad index, model or database is one line now, not N
        # workers failing in a loop under the supervisor; then let go, each worker opens its own.
        ctx, app = build_app(settings, warm=False)
        app.state.sessions.close()
        ctx.close()
        del ctx, app
        os.environ[WORKER_SETTINGS] = settings.model_dump_json()
        typer.echo(f"geoguide: serving {opts.index} on http://{host}:{port}/ with {workers} workers (Ctrl-C stops)",
                   err=True)
        uvicorn.run("geoguide.app.serve:worker_app", factory=True, workers=workers, host=host, port=port,
                    log_level="warning")
        return
    ctx, app = build_app(settings)
    try:
        typer.echo(f"geoguide: serving {opts.index} on http://{host}:{port}/ (Ctrl-C stops)", err=True)
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        app.state.sessions.close()
        ctx.close()
