"""``geoguide chat``: the terminal chat loop over ``agent.chat.ChatSession`` (the same sessions the web
page keeps): attach a photo, watch the steps, ask follow-ups; sessions survive restarts."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from geoguide.agent.settings import default_cache_path
from geoguide.app.locate import check_service, format_prediction, print_event
from geoguide.app.options import AgentOptions, agent_options
from geoguide.core.errors import GeoguideError

commands = typer.Typer()


CHAT_HELP = """Commands: /image PATH (locate a photo), /show (the prediction as JSON), /help, /quit.
Anything else is a follow-up question: "why not Portugal?", "is it in Lyon?", "look near Lyon instead",
"how sure are you?", "what did you see?" (places: countries, cities, regions or "45.76, 4.84")."""


def show_in_chat(pred) -> None:
    """The answer, and a warning line when it was made without a working model."""
    typer.echo(format_prediction(pred))
    try:
        check_service(pred)
    except GeoguideError as e:
        typer.echo(f"geoguide: warning: {e}", err=True)


@commands.command("chat")
@agent_options
def chat_cmd(
    image: Annotated[Path | None, typer.Argument(metavar="[IMAGE]", help="a photo to start with")] = None,
    session: Annotated[str | None, typer.Option("--session", help="resume this session id")] = None,
    db: Annotated[Path | None, typer.Option("--db", help="session database (default ~/.cache/geoguide/sessions.sqlite)")] = None,
    state_url: Annotated[str | None, typer.Option("--state-url", envvar="GEOGUIDE_STATE_URL", help="keep sessions in this database instead of --db, e.g. postgresql://user@host/db (shared with geoguide serve)")] = None,
    *,
    opts: AgentOptions,
) -> None:
    """A terminal chat: attach a photo, watch the steps, ask follow-ups; sessions survive restarts."""
    from geoguide.agent.backends import BackendError
    from geoguide.agent.chat import ChatSession, summary
    from geoguide.agent.factory import build_context
    from geoguide.agent.session_db import SessionBusy
    from geoguide.core.images import ImageLoadError

    if db is not None and state_url is not None:
        raise typer.BadParameter("give --db or --state-url, not both", param_hint="--state-url")
    ctx = build_context(opts.context_spec())
    chat = ChatSession(ctx, state_url or db or default_cache_path().with_name("sessions.sqlite"), session,
                       on_event=print_event, must_exist=session is not None)
    for diff in chat.differences() if session else []:
        typer.echo(f"geoguide: warning: session {session} was made with another setup — {diff}", err=True)
    try:
        if session:  # a web session resumed here (or on another machine): its photo found here first
            with chat.turn():
                chat.use_photo_here(default_cache_path().with_name("photos"))
        st = chat.state()
        if session and st is not None and st.prediction is not None:
            typer.echo(f"resumed session {chat.session_id}: {st.image_path}")
            typer.echo(summary(st.prediction))
        else:
            typer.echo(f"session {chat.session_id} (resume later with --session {chat.session_id}). /help for commands.")
            if session:
                typer.echo("(no photo in it yet: /image PATH)")
        if image is not None:
            with chat.turn():
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
                    with chat.turn():
                        show_in_chat(chat.attach(Path(path).expanduser()))
                except (ImageLoadError, BackendError, SessionBusy) as e:  # must not end the session
                    typer.echo(f"geoguide: error: {e}", err=True)
            else:
                try:
                    with chat.turn():  # a server may be answering the same session
                        typer.echo(f"geoguide> {chat.ask(line)}")
                except SessionBusy as e:
                    typer.echo(f"geoguide: error: {e}", err=True)
    finally:
        chat.close()
    typer.echo(f"bye — resume with: {chat.resume_command()}")
