"""``geoguide serve``: the web page and the HTTP API (``app.server``) in one long-lived process."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from geoguide.agent.settings import default_cache_path
from geoguide.app.options import AgentOptions, agent_options

commands = typer.Typer()


@commands.command("serve")
@agent_options
def serve_cmd(
    host: Annotated[str, typer.Option("--host", help="address to bind; beyond 127.0.0.1 needs --token or --insecure")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535)] = 8000,
    token: Annotated[str | None, typer.Option("--token", envvar="GEOGUIDE_TOKEN", help="bearer token required on every API call")] = None,
    insecure: Annotated[bool, typer.Option("--insecure", help="allow a non-local binding without a token")] = False,
    state_dir: Annotated[Path | None, typer.Option("--state-dir", help="sessions and their photos (default ~/.cache/geoguide/serve); they survive a restart")] = None,
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

    from geoguide.agent.factory import build_context
    from geoguide.app.doors import Doors
    from geoguide.app.server import check_binding, create_app, warm_up
    from geoguide.app.web_sessions import Truth

    for warning in check_binding(host, token, insecure):
        typer.echo(f"geoguide: warning: {warning}", err=True)
    truth = None
    if labels is not None:
        from geoguide.indices.photosets import load_dataset

        truth = {s.image_id: Truth(lat=s.lat, lon=s.lon, author=s.author)
                 for s in load_dataset("csv", labels=labels).samples}
    ctx = build_context(opts.context_spec())
    try:
        warm_up(ctx)
        app = create_app(ctx, token=token, state_dir=state_dir or default_cache_path().with_name("serve"),
                         truth=truth, rate_per_minute=rate_limit,
                         max_runs=max_runs, max_pending=4 * max_runs,
                         doors=Doors(host, allow_hosts=allow_host or (), allow_origins=allow_origin or ()))
        typer.echo(f"geoguide: serving {opts.index} on http://{host}:{port}/ (Ctrl-C stops)", err=True)
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        ctx.close()
