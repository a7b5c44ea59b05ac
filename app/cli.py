"""The ``geoguide`` command line: the root command, its sub-commands and the one error policy.

Every failure is one clear line on stderr and a non-zero exit. The commands live in the modules
of this package (``app.locate``, ``app.chat``, ``app.serve``, ``app.index``, ``app.evaluate``),
each a thin shell over the one compiled graph and one ``AgentContext`` (``agent.factory``).
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from geoguide.app import chat, evaluate, llama, locate, serve
from geoguide.app.index import index_app
from geoguide.app.options import CLIError
from geoguide.core.errors import first_line

__all__ = ["CLIError", "app", "entry", "main"]

app = typer.Typer(add_completion=False, help="Where was this photo taken?")
for module in (locate, chat, serve, evaluate, llama):
    app.registered_commands += module.commands.registered_commands
app.add_typer(index_app, name="index")


def _show_version(value: bool) -> None:
    if value:
        from geoguide.core.version import provenance

        p = provenance()
        where = f" (checkout {p.commit[:12]}{', modified' if p.dirty else ''})" if p.commit else ""
        typer.echo(f"geoguide {p.version}{where}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_show_version, is_eager=True,
                                                help="print geoguide's version and exit")] = False) -> None:
    """Where was this photo taken?"""


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

    from geoguide.core.validation import describe_validation

    if isinstance(exc, ValidationError):  # "1 validation error for AgentConfig" says nothing useful
        return describe_validation(exc, limit=3)
    return first_line(exc)


def main(argv: list[str] | None = None) -> int:
    """Console entry point. Exit codes: 0 done; 2 usage or input error (click's usage message, or
    one line); 3 the model service cannot be used; 4 the run found no answer; 70 a bug in geoguide (one line, and the
    traceback with GEOGUIDE_DEBUG=1); 130 interrupted. Nothing heavy is imported before a command
    needs it, so ``--help`` answers at once."""
    import os

    from geoguide.core.errors import GeoguideError

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
        typer.echo(f"geoguide: error: {_disk_full(e) or _first_line(e)}", err=True)
        return getattr(e, "exit_code", 2)
    except Exception as e:
        if debug:
            raise
        if _disk_full(e):  # SQLite's "database or disk is full" is no OSError
            typer.echo(f"geoguide: error: {_disk_full(e)}", err=True)
            return 2
        typer.echo(f"geoguide: internal error: {type(e).__name__}: {_first_line(e)} "
                   "(a bug in geoguide; rerun with GEOGUIDE_DEBUG=1 for the traceback)", err=True)
        return INTERNAL_ERROR
    return 0


def _disk_full(e: BaseException) -> str | None:
    """A full disk met by a plain write (not a reserved one, which says more): the path and what to do."""
    from geoguide.core.atomic import free_bytes, is_disk_full
    from geoguide.core.errors import GeoguideError

    if isinstance(e, GeoguideError) or not is_disk_full(e):
        return None
    where = getattr(e, "filename", None)
    free = f" ({free_bytes(Path(where).parent) / 1e6:.1f} MB free there)" if where else ""
    return (f"no space left on the disk writing {where or 'a file'}{free}; free some space and run the same "
            "command again (index work and evals resume)")


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
