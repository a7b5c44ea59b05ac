"""The ``geoguide`` command line. Every failure is one clear line on stderr and a non-zero exit."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Literal

import typer

from agent.cli_index import index_app
from agent.cli_options import (
    DEFAULT_ATTEMPTS,
    DEFAULT_MAX_SECONDS,
    DEFAULT_TIMEOUT_S,
    AttemptsOpt,
    CacheOpt,
    CLIError,
    FallbackOpt,
    IndexOpt,
    MaxSecondsOpt,
    PlannerOpt,
    PlannerOptOpt,
    PolicyOpt,
    TimeoutOpt,
    VlmOpt,
    VlmOptOpt,
    echo_json,
)
from indices.errors import GeoguideError

app = typer.Typer(add_completion=False, help="Where was this photo taken?")
app.add_typer(index_app, name="index")


# ---------------------------------------------------------------------------------------- search


@app.command("search")
def search(
    image: Annotated[Path, typer.Argument(metavar="IMAGE", help="query photo")],
    index_dir: Annotated[Path, typer.Option("--index", help="index directory")],
    k: Annotated[int, typer.Option("-k", help="number of candidates")] = 10,
    submap: Annotated[str, typer.Option("--submap", help="submap id, e.g. country:FR, kmeans-100:37, radius:45.7,4.8,50")] = "global",
    exclude_author: Annotated[list[str] | None, typer.Option("--exclude-author", help="skip references by this photographer; repeatable")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Visual place recognition: the most similar references inside one submap."""
    from indices.images import load_image
    from indices.store import ReferenceIndex
    from tools.base import ToolError
    from tools.retrieval import SearchArgs, search_submap

    img = load_image(image)
    index = ReferenceIndex(index_dir)
    res = search_submap(index, img, SearchArgs(submap_id=submap, k=k, exclude_authors=exclude_author or []))
    if isinstance(res, ToolError):
        raise CLIError(res.error)
    if as_json:
        echo_json(res.model_dump())
        return
    s = res.summary
    typer.echo(f"{s.submap.name} ({s.submap.size} refs): best similarity {s.best_similarity}, spread {s.spread_km} km")
    for i, c in enumerate(res.candidates, 1):
        typer.echo(f"{i:>3}. {c.similarity:.4f}  {c.lat:9.4f} {c.lon:10.4f}  {c.country:<3} {c.ref_id}")


# ---------------------------------------------------------------------------------------- agent

def open_backend(spec: str, cache: Path | None, *, timeout: float, attempts: int, opts: list[str] | None = None):
    """One backend from its spec: model backends get the cache, the call budget and ``--*-opt`` options."""
    from agent.backends import make_backend, parse_backend_options

    options: dict = parse_backend_options(opts or [])
    if not spec.startswith(("none", "replay:")):
        options["cache"] = None if str(cache) == "none" else str(cache or default_cache_path())
        options.update(timeout=timeout, max_attempts=attempts)
    return make_backend(spec, **options)


def make_context(index_dir: Path, vlm: str, policy: str, cache: Path | None = None, *,
                 timeout: float = DEFAULT_TIMEOUT_S, attempts: int = DEFAULT_ATTEMPTS,
                 vlm_opts: list[str] | None = None, planner: str | None = None,
                 planner_opts: list[str] | None = None, **config):
    """Open the index, the model backends and the config the same way for every command."""
    from agent.config import AgentConfig
    from agent.context import AgentContext
    from agent.policies import make_policy
    from indices.store import ReferenceIndex

    cfg = AgentConfig(policy=policy, **config)
    make_policy(cfg.policy)  # an unknown policy fails before anything is loaded
    index = ReferenceIndex(index_dir)
    backend = open_backend(vlm, cache, timeout=timeout, attempts=attempts, opts=vlm_opts)
    if hasattr(backend, "restrict_countries") and index.scheme_of("country") is not None:
        backend.restrict_countries([sm.id.split(":", 1)[1] for sm in index.list_submaps("country")])
    planning = None
    if planner is not None and (planner != vlm or planner_opts):
        planning = open_backend(planner, cache, timeout=timeout, attempts=attempts, opts=planner_opts)
    return AgentContext(index=index, backend=backend, config=cfg, planner=planning)


def default_cache_path() -> Path:
    import os

    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "geoguide"
    root.mkdir(parents=True, exist_ok=True)
    return root / "responses.sqlite"


def print_event(ev) -> None:
    tool = f"[{ev.tool}] " if ev.tool else ""
    typer.echo(f"  · {ev.node:<9} {tool}{ev.text}", err=True)


def format_prediction(pred) -> str:
    if pred.lat is None:
        return f"No answer ({'; '.join(pred.notes) or pred.prior_error or 'nothing found'})"
    place = ", ".join(x for x in (pred.nearest_city, pred.country_name) if x) or "open sea"
    lines = [f"Answer: {pred.lat:.5f}, {pred.lon:.5f} — {place} (confidence {pred.confidence:.2f}, from {pred.source})",
             f"Why: {pred.why}"]
    if pred.prior is not None:
        p = pred.prior
        pt = f"({p.lat:.4f}, {p.lon:.4f})" if p.has_point else ""
        top = ", ".join(f"{c.label} {c.probability:.2f}" for c in p.countries[:3])
        lines.append(f"Prior: {top} {pt} {p.rationale[:100]}".rstrip())
    elif pred.prior_error:
        lines.append(f"Prior: none ({pred.prior_error})")
    for i, s in enumerate(pred.trail, 1):
        lines.append(f"Search {i}: {s.summary.submap.name} — best {s.summary.best_similarity}; {s.reason}")
    for c in pred.top_candidates[:3]:
        lines.append(f"  match {c.ref_id} ({c.country}) similarity {c.similarity:.3f}, score {c.score:.3f}")
    for n in pred.notes:
        lines.append(f"Note: {n}")
    return "\n".join(lines)


def check_service(pred) -> None:
    """A prediction made while the model was failing is not what was asked for, unless the user
    accepted a retrieval fallback: the answer is printed, then this makes the exit non-zero."""
    from agent.backends.errors import ModelServiceError

    failure = pred.model_failure()
    if failure:
        raise ModelServiceError(f"{failure}; the answer above rests on retrieval alone "
                                "(pass --fallback retrieval to accept that)")


@app.command("locate")
def locate_cmd(
    image: Annotated[Path, typer.Argument(metavar="IMAGE", help="the photo")],
    index_dir: IndexOpt,
    vlm: VlmOpt = "none",
    policy: PolicyOpt = "rules",
    as_json: Annotated[bool, typer.Option("--json", help="print the whole prediction as JSON")] = False,
    prior_level: Annotated[Literal["point", "country"], typer.Option("--prior-level", help="point | country")] = "point",
    exclude_author: Annotated[list[str] | None, typer.Option("--exclude-author", help="never retrieve this photographer's photos; repeatable")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="do not stream the steps")] = False,
    cache: CacheOpt = None,
    timeout: TimeoutOpt = DEFAULT_TIMEOUT_S,
    attempts: AttemptsOpt = DEFAULT_ATTEMPTS,
    max_seconds: MaxSecondsOpt = DEFAULT_MAX_SECONDS,
    fallback: FallbackOpt = "none",
    vlm_opt: VlmOptOpt = None,
    planner: PlannerOpt = None,
    planner_opt: PlannerOptOpt = None,
) -> None:
    """Where was this photo taken? Streams the agent's steps, then the answer and its evidence."""
    from agent.graph import locate

    ctx = make_context(index_dir, vlm, policy, cache, timeout=timeout, attempts=attempts, vlm_opts=vlm_opt,
                       planner=planner, planner_opts=planner_opt, prior_level=prior_level,
                       exclude_authors=exclude_author or [], fallback=fallback, caps={"max_seconds": max_seconds})
    try:
        pred = locate(ctx, image, on_event=None if (quiet or as_json) else print_event)
    finally:
        ctx.close()
    typer.echo(pred.model_dump_json(indent=2) if as_json else format_prediction(pred))
    check_service(pred)


CHAT_HELP = """Commands: /image PATH (locate a photo), /show (the prediction as JSON), /help, /quit.
Anything else is a follow-up question, e.g. "why not Portugal?" or "look near Lyon instead"."""


def show_in_chat(pred) -> None:
    """The answer, and a warning line when it was made without a working model."""
    typer.echo(format_prediction(pred))
    try:
        check_service(pred)
    except GeoguideError as e:
        typer.echo(f"geoguide: warning: {e}", err=True)


@app.command("chat")
def chat_cmd(
    image: Annotated[Path | None, typer.Argument(metavar="[IMAGE]", help="a photo to start with")] = None,
    index_dir: IndexOpt = Path("index"),
    session: Annotated[str | None, typer.Option("--session", help="resume this session id")] = None,
    vlm: VlmOpt = "none",
    policy: PolicyOpt = "rules",
    db: Annotated[Path | None, typer.Option("--db", help="session database (default ~/.cache/geoguide/sessions.sqlite)")] = None,
    exclude_author: Annotated[list[str] | None, typer.Option("--exclude-author", help="never retrieve this photographer's photos")] = None,
    cache: CacheOpt = None,
    timeout: TimeoutOpt = DEFAULT_TIMEOUT_S,
    attempts: AttemptsOpt = DEFAULT_ATTEMPTS,
    max_seconds: MaxSecondsOpt = DEFAULT_MAX_SECONDS,
    fallback: FallbackOpt = "none",
    vlm_opt: VlmOptOpt = None,
    planner: PlannerOpt = None,
    planner_opt: PlannerOptOpt = None,
) -> None:
    """A terminal chat: attach a photo, watch the steps, ask follow-ups; sessions survive restarts."""
    from agent.backends import BackendError
    from agent.chat import ChatSession, summary
    from indices.images import ImageLoadError

    ctx = make_context(index_dir, vlm, policy, cache, timeout=timeout, attempts=attempts, vlm_opts=vlm_opt,
                       planner=planner, planner_opts=planner_opt,
                       exclude_authors=exclude_author or [], fallback=fallback, caps={"max_seconds": max_seconds})
    chat = ChatSession(ctx, db or default_cache_path().with_name("sessions.sqlite"), session, on_event=print_event,
                       must_exist=session is not None)
    for diff in chat.differences() if session else []:
        typer.echo(f"geoguide: warning: session {session} was made with another setup — {diff}", err=True)
    try:
        st = chat.state()
        if session and st is not None and st.prediction is not None:
            typer.echo(f"resumed session {chat.session_id}: {st.image_path}")
            typer.echo(summary(st.prediction))
        else:
            typer.echo(f"session {chat.session_id} (resume later with --session {chat.session_id}). /help for commands.")
            if session:
                typer.echo("(no photo in it yet: /image PATH)")
        if image is not None:
            show_in_chat(chat.attach(image))
        interactive = sys.stdin.isatty()
        while True:
            if interactive:
                typer.echo("you> ", nl=False)
            line = sys.stdin.readline()
            if not line:
                break
            line = line.strip()
            if not line:
                continue
            if line in ("/quit", "/exit"):
                break
            if line == "/help":
                typer.echo(CHAT_HELP)
            elif line == "/show":
                st = chat.state()
                typer.echo(st.prediction.model_dump_json(indent=2) if st and st.prediction else "no prediction yet")
            elif line.startswith("/image"):
                path = line[len("/image"):].strip()
                try:
                    show_in_chat(chat.attach(Path(path).expanduser()))
                except (ImageLoadError, BackendError) as e:  # a bad photo or a model outage must not end the session
                    typer.echo(f"geoguide: error: {e}", err=True)
            else:
                typer.echo(f"geoguide> {chat.ask(line)}")
    finally:
        chat.close()
    typer.echo(f"bye — resume with: {chat.resume_command()}")


@app.command("serve")
def serve_cmd(
    index_dir: IndexOpt,
    vlm: VlmOpt = "none",
    policy: PolicyOpt = "rules",
    host: Annotated[str, typer.Option("--host", help="address to bind; beyond 127.0.0.1 needs --token or --insecure")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535)] = 8000,
    token: Annotated[str | None, typer.Option("--token", envvar="GEOGUIDE_TOKEN", help="bearer token required on every API call")] = None,
    insecure: Annotated[bool, typer.Option("--insecure", help="allow a non-local binding without a token")] = False,
    cache: CacheOpt = None,
    timeout: TimeoutOpt = DEFAULT_TIMEOUT_S,
    attempts: AttemptsOpt = DEFAULT_ATTEMPTS,
    max_seconds: MaxSecondsOpt = DEFAULT_MAX_SECONDS,
    fallback: FallbackOpt = "none",
    vlm_opt: VlmOptOpt = None,
    planner: PlannerOpt = None,
    planner_opt: PlannerOptOpt = None,
    state_dir: Annotated[Path | None, typer.Option("--state-dir", help="sessions and their photos (default ~/.cache/geoguide/serve); they survive a restart")] = None,
    labels: Annotated[Path | None, typer.Option("--labels", help="labels CSV of an eval set: its photos get their true location on the map and their photographer excluded")] = None,
    rate_limit: Annotated[int, typer.Option("--rate-limit", min=1, help="POST requests per minute per client")] = 60,
) -> None:
    """The web page (http://HOST:PORT/) and the HTTP API (OpenAPI at /docs)."""
    import uvicorn

    from agent.server import check_binding, create_app, warm_up
    from agent.web_sessions import Truth

    for warning in check_binding(host, token, insecure):
        typer.echo(f"geoguide: warning: {warning}", err=True)
    truth = None
    if labels is not None:
        from eval.datasets import load_dataset

        truth = {s.image_id: Truth(lat=s.lat, lon=s.lon, author=s.author)
                 for s in load_dataset("csv", labels=labels).samples}
    ctx = make_context(index_dir, vlm, policy, cache, timeout=timeout, attempts=attempts, vlm_opts=vlm_opt,
                       planner=planner, planner_opts=planner_opt, fallback=fallback, caps={"max_seconds": max_seconds})
    try:
        warm_up(ctx)
        app = create_app(ctx, token=token, state_dir=state_dir or default_cache_path().with_name("serve"),
                         truth=truth, rate_per_minute=rate_limit)
        typer.echo(f"geoguide: serving {index_dir} on http://{host}:{port}/ (Ctrl-C stops)", err=True)
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        ctx.close()


@app.command("models")
def models_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Every descriptor and prior backend: can it run here, where it looks for weights, how to get them."""
    from agent.models_catalog import catalog

    cat = catalog()
    if as_json:
        echo_json(cat.model_dump())
        return
    mark = {True: "yes", False: "no", None: "depends"}
    for m in cat.models:
        typer.echo(f"{m.kind:<10} {m.name:<18} {mark[m.runs_here]:<8} {m.detail}")
        if m.runs_here is False and m.looks_in:
            typer.echo(f"{'':<38}looks in: {'; '.join(m.looks_in)}")
        if m.runs_here is False and m.how_to_get:
            typer.echo(f"{'':<38}get them: {m.how_to_get}")


from eval.cli import ablate_cmd, eval_cmd  # noqa: E402  (commands live with their package)

app.command("eval")(eval_cmd)
app.command("ablate")(ablate_cmd)


INTERNAL_ERROR = 70  # sysexits' EX_SOFTWARE: a bug in geoguide, never a user's mistake
INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C


def _click_exceptions() -> tuple[type[Exception], type[Exception], type[Exception]]:
    """(usage error base, Exit, Abort) of the click that typer really uses: recent typer bundles its
    own copy (``typer._click``), whose exceptions are not the ``click`` package's."""
    try:
        from typer._click.exceptions import ClickException
    except ImportError:  # typer < 0.20 runs on the click package
        from click.exceptions import ClickException
    return ClickException, typer.Exit, typer.Abort


@contextlib.contextmanager
def _second_ctrl_c_exits() -> Iterator[None]:
    """First Ctrl-C: KeyboardInterrupt, so work in progress is wound up and summaries written. A
    node running on LangGraph's worker thread (a streamed run) can keep the process until its model
    call times out; a second Ctrl-C then exits at once (what was written is kept: every record is
    fsynced as it is made)."""
    import os
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pressed = []

    def on_sigint(signum, frame):
        if pressed:
            os.write(2, b"geoguide: interrupted\n")
            os._exit(INTERRUPTED)
        pressed.append(True)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _first_line(exc: BaseException) -> str:
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):  # "1 validation error for AgentConfig" says nothing useful
        return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:3])
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    """Console entry point. Exit codes: 0 done; 2 usage or input error (click's usage message, or
    one line); 3 the model service cannot be used; 70 a bug in geoguide (one line, and the
    traceback with GEOGUIDE_DEBUG=1); 130 interrupted. Nothing heavy is imported before a command
    needs it, so ``--help`` answers at once."""
    import os

    from indices.errors import GeoguideError

    logging.basicConfig(level=logging.WARNING, format="geoguide: %(levelname)s: %(message)s")
    usage_error, exit_request, abort = _click_exceptions()
    debug = bool(os.environ.get("GEOGUIDE_DEBUG"))
    try:
        with _second_ctrl_c_exits():
            code = typer.main.get_command(app).main(args=argv, prog_name="geoguide", standalone_mode=False)
        # Non-standalone typer returns an Exit's code instead of raising it; Ctrl-C arrives as Exit(130).
        if isinstance(code, int) and code:
            if code == INTERRUPTED:
                typer.echo("geoguide: interrupted", err=True)
            return code
    except usage_error as e:  # click's own message and usage line
        e.show()
        return e.exit_code
    except exit_request as e:
        return e.exit_code
    except (abort, KeyboardInterrupt):
        typer.echo("geoguide: interrupted", err=True)
        return INTERRUPTED
    except (GeoguideError, OSError, ValueError) as e:  # ValueError: bad values, pydantic validation
        if debug:
            raise
        typer.echo(f"geoguide: error: {_first_line(e)}", err=True)
        return getattr(e, "exit_code", 2)
    except Exception as e:
        if debug:
            raise
        typer.echo(f"geoguide: internal error: {type(e).__name__}: {_first_line(e)} "
                   "(a bug in geoguide; rerun with GEOGUIDE_DEBUG=1 for the traceback)", err=True)
        return INTERNAL_ERROR
    return 0


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
