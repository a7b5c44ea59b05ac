"""Fault injection: the real ``geoguide`` command, as a subprocess, against a local OpenAI-compatible
server that misbehaves in each documented way.

Each case asserts what a user sees: the exit code (0 done, 2 usage/input, 3 the model service,
130 interrupted), one line naming the cause and the fix, a time bound, what the response cache
holds afterwards, and for ``eval`` what the summary says. The server is ``tests/fakes/openai_server``
running in this process; geoguide reaches it over TCP exactly as it would reach vLLM or the API.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fakes.openai_server import (
    FakeOpenAIServer,
    delayed,
    http_error,
    raw_reply,
    reply_json,
    reply_refusal,
    trickled,
)

from tests.synthetic import make_reference_set

GOOD = {
    "clues": [{"kind": "script", "text": "French signs"}],
    "countries": [{"iso2": "FR", "probability": 0.8}],
    "lat": 48.85,
    "lon": 2.35,
    "rationale": "Paris.",
}
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A small reference index (thumbnail descriptor), its photos and labels."""
    root = tmp_path_factory.mktemp("faults")
    labels = make_reference_set(root)
    out = root / "idx"
    r = geoguide(root, "index", "build", "--images", root / "images", "--labels", labels, "--out", out,
                 "--descriptor", "thumbnail", "--submaps", "country,kmeans:3", "--descriptor-opt", "size=8")
    assert r.returncode == 0, r.stderr
    return root, labels, out


def geoguide(home: Path, *args, timeout: float = 120, env_extra: dict[str, str] | None = None,
             **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "OPENAI_API_KEY": "sk-test", "XDG_CACHE_HOME": str(home / "cache"),
           "PYTHONPATH": str(REPO), **(env_extra or {})}
    env.pop("GEOGUIDE_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "geoguide", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=home, **kw)


def cached_replies(db: Path) -> int:
    if not db.exists():
        return 0
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT COUNT(*) FROM replies").fetchone()[0]


def dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def locate(world, server_url: str, *extra, cache: Path) -> tuple[subprocess.CompletedProcess, float]:
    root, _, idx = world
    start = time.monotonic()
    r = geoguide(root, "locate", root / "images" / "paris_0.jpg", "--index", idx,
                 "--vlm", f"openai-compatible:{server_url}:test-vlm", "--cache", cache,
                 "--timeout", "2", "--attempts", "2", *extra)
    return r, time.monotonic() - start


def one_error_line(r: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("geoguide: error:")]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    return lines[0]


# --- the model cannot be used: exit 3, one line with cause and fix, nothing cached --------------

FATAL = {
    "401": (http_error(401, "Incorrect API key provided"), "API key"),
    "404": (http_error(404, "The model `test-vlm` does not exist"), "ends in /v1"),
    "400": (http_error(400, "Unsupported parameter: 'temperature'"), "HTTP 400"),
    "html-200": (raw_reply(b"<!doctype html><html><body>Welcome to nginx</body></html>", "text/html"), "/v1"),
    "invalid-json": (raw_reply(b'{"id": "x", "choices": [', "application/json"), "JSON"),
    "error-200": (raw_reply(b'{"error": {"message": "The server is overloaded", "type": "server_error"}}'),
                  "The server is overloaded"),
}


@pytest.mark.parametrize("mode", sorted(FATAL))
def test_misconfigured_server_exits_3_with_cause_and_fix(world, fake_openai: FakeOpenAIServer, tmp_path, mode):
    reply, fix = FATAL[mode]
    fake_openai.always(reply)
    r, took = locate(world, fake_openai.base_url, cache=tmp_path / "c.sqlite")
    assert r.returncode == 3, (r.stdout, r.stderr)
    line = one_error_line(r)
    assert fix in line and "--fallback retrieval" in line
    assert "Answer:" not in r.stdout  # no retrieval-only answer passed off as the agent's
    assert cached_replies(tmp_path / "c.sqlite") == 0
    assert took < 60


def test_refused_connection_exits_3(world, tmp_path):
    r, took = locate(world, f"http://127.0.0.1:{dead_port()}/v1", cache=tmp_path / "c.sqlite")
    assert r.returncode == 3
    assert "start the model server" in one_error_line(r)


def test_fallback_retrieval_is_explicit_and_said(world, tmp_path):
    r, _ = locate(world, f"http://127.0.0.1:{dead_port()}/v1", "--fallback", "retrieval", "--json",
                  cache=tmp_path / "c.sqlite")
    assert r.returncode == 0, r.stderr
    pred = json.loads(r.stdout)
    assert pred["lat"] is not None and pred["prior"] is None
    assert pred["service_failure"] == "unreachable" and pred["fallback"] == "retrieval"


# --- the model is exhausted: an answer from retrieval within the time cap, said loudly --------


@pytest.mark.parametrize("mode", ["hang", "endless-429", "trickle"])
def test_exhausted_model_answers_from_retrieval_within_the_cap(world, fake_openai, tmp_path, mode):
    """``trickle``: one byte every 0.5 s, so no single read times out; only a wall-clock limit ends it."""
    fake_openai.always({"hang": delayed(60), "endless-429": http_error(429, "Rate limit reached", retry_after=0.2),
                        "trickle": trickled(0.5)}[mode])
    r, took = locate(world, fake_openai.base_url, "--max-seconds", "4", "--timeout", "30", "--attempts", "50",
                     cache=tmp_path / "c.sqlite")
    assert r.returncode == 3
    assert "Answer:" in r.stdout and "Prior: none" in r.stdout  # retrieval answered, and says the prior is missing
    assert "retrieval alone" in one_error_line(r)
    assert took < 4 + 25  # the cap plus process start-up on a loaded 2-core box, not 30 s x 50 attempts
    assert cached_replies(tmp_path / "c.sqlite") == 0


def test_refusal_is_no_prior_not_an_error(world, fake_openai, tmp_path):
    fake_openai.always(reply_refusal("I can't help identify where this photo was taken."))
    r, _ = locate(world, fake_openai.base_url, "--json", cache=tmp_path / "c.sqlite")
    assert r.returncode == 0, r.stderr
    pred = json.loads(r.stdout)
    assert pred["prior_failure"] == "refused" and pred["service_failure"] is None and pred["lat"] is not None
    assert cached_replies(tmp_path / "c.sqlite") == 0  # a refusal is never replayed


def test_valid_reply_is_cached_once(world, fake_openai, tmp_path):
    fake_openai.script(reply_json(GOOD))
    r, _ = locate(world, fake_openai.base_url, cache=tmp_path / "c.sqlite")
    assert r.returncode == 0, r.stderr
    assert cached_replies(tmp_path / "c.sqlite") == 1
    r, _ = locate(world, fake_openai.base_url, cache=tmp_path / "c.sqlite")  # the script is empty now
    assert r.returncode == 0 and len(fake_openai.requests) == 1


# --- eval: a dead server ends the run quickly and loudly; refusals are counted ---------------


def run_eval(world, vlm: str, out: Path, *extra, **kw) -> subprocess.CompletedProcess:
    root, labels, idx = world
    return geoguide(root, "eval", "--out", out, "--index", idx, "--labels", labels, "--images", root / "images",
                    "--vlm", vlm, "--cache", out.parent / "c.sqlite", "--timeout", "2", "--attempts", "2",
                    "--exclude-same-author", *extra, **kw)


def test_eval_against_a_dead_server_stops_in_seconds(world, tmp_path):
    start = time.monotonic()
    r = run_eval(world, f"openai-compatible:http://127.0.0.1:{dead_port()}/v1:m", tmp_path / "run")
    assert r.returncode == 3, (r.stdout, r.stderr)
    assert "3 photos in a row" in one_error_line(r)
    assert time.monotonic() - start < 90
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["evaluated"] == 0 and summary["not_run"] == 24
    assert not (tmp_path / "run" / "predictions.jsonl").read_text().strip()  # retried by the next run


def test_eval_with_401_stops_and_fallback_is_recorded(world, fake_openai, tmp_path):
    fake_openai.always(http_error(401, "Incorrect API key provided"))
    r = run_eval(world, f"openai-compatible:{fake_openai.base_url}:m", tmp_path / "run")
    assert r.returncode == 3 and "API key" in one_error_line(r)
    r = run_eval(world, f"openai-compatible:{fake_openai.base_url}:m", tmp_path / "fb", "--fallback", "retrieval",
                 "--limit", "4")
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "fb" / "summary.json").read_text())
    assert summary["fallback"] == "retrieval" and summary["answered_without_model"] == 4
    assert summary["no_prior"] == {"misconfigured": 4}
    assert "answered by retrieval alone" in (tmp_path / "fb" / "summary.md").read_text()


def test_eval_counts_refusals_by_reason(world, fake_openai, tmp_path):
    fake_openai.always(reply_refusal("I can't help with that."))
    r = run_eval(world, f"openai-compatible:{fake_openai.base_url}:m", tmp_path / "run", "--limit", "3")
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["no_prior"] == {"refused": 3} and summary["evaluated"] == 3
    assert "refused 3" in (tmp_path / "run" / "summary.md").read_text()


def test_ctrl_c_exits_130_and_keeps_the_summary(world, fake_openai, tmp_path):
    root, labels, idx = world
    fake_openai.script(*[reply_json(GOOD)] * 2)
    fake_openai.always(delayed(60, reply_json(GOOD)))  # the third photo hangs: interrupt it
    env = {**os.environ, "OPENAI_API_KEY": "sk-test", "XDG_CACHE_HOME": str(root / "cache"),
           "PYTHONPATH": str(REPO)}
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "geoguide", "eval", "--out", str(out), "--index", str(idx), "--labels", str(labels),
         "--images", str(root / "images"), "--vlm", f"openai-compatible:{fake_openai.base_url}:m",
         "--cache", "none", "--timeout", "50", "--exclude-same-author"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=root)
    deadline = time.monotonic() + 90
    while len(fake_openai.requests) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(fake_openai.requests) >= 3, "the run never reached the third photo"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["evaluated"] == 2 and summary["not_run"] == 22
    assert json.loads((out / "run.json").read_text())["sessions"][-1]["outcome"] == "interrupted"


# --- the command line behaves like a command line -------------------------------------------


@pytest.mark.parametrize(
    "argv, says",
    [
        ([], "Missing command"),
        (["locat"], "No such command"),
        (["locate"], "Missing argument"),
        (["locate", "x.jpg"], "Missing option '--index'"),
        (["locate", "x.jpg", "--index", "i", "--policy", "bogus"], "'--policy': 'bogus' is not one of"),
        (["locate", "x.jpg", "--index", "i", "--prior-level", "street"], "'--prior-level'"),
        (["locate", "x.jpg", "--index", "i", "--fallback", "maybe"], "'--fallback'"),
        (["eval", "--out", "o", "--index", "i", "--limit", "0"], "'--limit'"),
        (["eval", "--out", "o", "--index", "i", "--limit", "-3"], "'--limit'"),
        (["index", "build", "--out", "o", "--bogus"], "No such option"),
    ],
)
def test_usage_errors_print_usage_and_exit_2(tmp_path, argv, says):
    (tmp_path / "x.jpg").write_bytes(b"")  # there, so the error under test is the one reported
    (tmp_path / "i").mkdir()
    r = geoguide(tmp_path, *argv, timeout=60)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Usage: geoguide" in r.stderr and says in r.stderr and "internal error" not in r.stderr


def test_invalid_config_value_names_the_setting(world, tmp_path):
    root, labels, idx = world
    r = geoguide(root, "eval", "--out", tmp_path / "o", "--index", idx, "--labels", labels, "--images",
                 root / "images", "--set", "k=0")
    assert r.returncode == 2
    line = one_error_line(r)
    assert "k" in line and "greater than or equal to 1" in line and "validation error for" not in line


def test_programming_error_is_one_line_with_a_distinct_code(world, monkeypatch, capsys):
    """A bug is not a user error: exit 70, one line, and the hint; the traceback with GEOGUIDE_DEBUG=1."""
    import geoguide.indices.store
    from geoguide.app.cli import INTERNAL_ERROR, main

    _, _, idx = world

    def broken(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(geoguide.indices.store, "ReferenceIndex", broken)
    monkeypatch.delenv("GEOGUIDE_DEBUG", raising=False)
    assert main(["index", "info", str(idx)]) == INTERNAL_ERROR == 70
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal error: KeyError" in err and "GEOGUIDE_DEBUG=1" in err
    monkeypatch.setenv("GEOGUIDE_DEBUG", "1")
    with pytest.raises(KeyError):
        main(["index", "info", str(idx)])


def test_help_imports_nothing_heavy():
    """``--help`` must answer at once: the CLI module may not pull in torch, faiss, openai or langgraph."""
    code = ("import sys, geoguide.app.cli; heavy = [m for m in ('torch', 'faiss', 'openai', 'langgraph', 'transformers', "
            "'cv2') if m in sys.modules]; print(','.join(heavy))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "", r.stdout + r.stderr


# --- inputs from elsewhere, through the real command line --------------------------------------


def test_build_refuses_another_index_unless_overwrite(world, tmp_path, capsys):
    from geoguide.app.cli import main

    root, labels, idx = world
    import shutil

    target = tmp_path / "idx"
    shutil.copytree(idx, target)
    argv = ["index", "build", "--images", str(root / "images"), "--labels", str(labels), "--out", str(target),
            "--descriptor", "thumbnail", "--descriptor-opt", "size=4", "--submaps", "country"]
    assert main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err
    (target / "stale.npy").write_bytes(b"x")  # not geoguide's: kept; geoguide's own old files are replaced
    assert main([*argv, "--overwrite"]) == 0
    capsys.readouterr()
    assert main(["index", "info", str(target), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["descriptor"]["conf"] == {"size": 4}


def test_unreadable_images_are_named_by_build_and_info(tmp_path, capsys):
    from geoguide.app.cli import main

    labels = make_reference_set(tmp_path)
    (tmp_path / "images" / "rome_1.jpg").write_bytes(b"\x89PNG garbage")
    out = tmp_path / "idx"
    assert main(["index", "build", "--images", str(tmp_path / "images"), "--labels", str(labels), "--out", str(out),
                 "--descriptor", "thumbnail", "--submaps", "country"]) == 0
    assert "unreadable: rome_1.jpg" in capsys.readouterr().err
    assert main(["index", "info", str(out)]) == 0
    assert "unreadable: rome_1.jpg" in capsys.readouterr().out


@pytest.mark.parametrize(
    "make, says",
    [
        (lambda d: (d.mkdir(), d)[1], "folder"),
        (lambda d: (d.write_bytes(b"IMG_ID,AUTHOR,LAT,LON\nparis_0.jpg,a,48.8,2.3\n\xff\xfe,b,1,2\n"), d)[1], "UTF-8"),
        (lambda d: (d.write_text('IMG_ID,AUTHOR,LAT,LON\n"paris_0.jpg,a,48.8,2.3\n'), d)[1], "quote"),
    ],
)
def test_bad_labels_files_get_precise_messages(tmp_path, capsys, make, says):
    from geoguide.app.cli import main

    make_reference_set(tmp_path)
    bad = make(tmp_path / "bad.csv")
    rc = main(["index", "build", "--images", str(tmp_path / "images"), "--labels", str(bad), "--out",
               str(tmp_path / "idx"), "--descriptor", "thumbnail"])
    err = capsys.readouterr().err
    assert rc == 2 and says in err and err.count("\n") == 1, err
    assert not (tmp_path / "idx").exists()  # a failed build leaves nothing behind


def test_labels_without_images_is_a_precise_error(tmp_path, capsys):
    from geoguide.app.cli import main

    labels = make_reference_set(tmp_path)
    rc = main(["index", "build", "--labels", str(labels), "--out", str(tmp_path / "idx"), "--descriptor", "thumbnail"])
    err = capsys.readouterr().err
    assert rc == 2 and "--images" in err and err.count("\n") == 1, err


def test_eval_that_left_photos_to_a_dead_model_does_not_exit_0(world, tmp_path):
    """Two photos, both failing: fewer than the three-in-a-row stop, still not a finished run."""
    r = run_eval(world, f"openai-compatible:http://127.0.0.1:{dead_port()}/v1:m", tmp_path / "run", "--limit", "2")
    assert r.returncode == 3 and "2 photo(s) could not use the model" in one_error_line(r)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["not_run"] == 2 and summary["evaluated"] == 0


def test_a_run_without_an_answer_does_not_exit_0(world, tmp_path):
    root, _, idx = world
    replay = tmp_path / "prior.csv"
    replay.write_text("IMG_ID,LAT_pred,LON_pred,location,success,model_name\nparis_0.jpg,,,,False,test-vlm\n")
    r = geoguide(root, "locate", root / "images" / "paris_0.jpg", "--index", idx, "--vlm", f"replay:{replay}",
                 "--policy", "prior")
    assert r.returncode == 4, (r.stdout, r.stderr)
    assert "No answer" in r.stdout and "no answer for" in one_error_line(r)


def test_index_add_with_nothing_to_add_says_why(world, tmp_path):
    from PIL import Image

    root, _, idx = world
    folder = tmp_path / "no_gps"
    folder.mkdir()
    Image.new("RGB", (32, 32), (1, 2, 3)).save(folder / "a.jpg")
    r = geoguide(root, "index", "add", idx, "--images", folder)
    assert r.returncode == 2
    line = one_error_line(r)
    assert "nothing to add" in line and "no GPS in EXIF" in line and "--labels" in line


def test_ablate_help_documents_the_plan_format_at_80_columns(tmp_path):
    r = geoguide(tmp_path, "ablate", "--help", env_extra={"COLUMNS": "80"})
    assert r.returncode == 0
    text = " ".join(r.stdout.split())
    assert "a [base] table of settings" in text and "[[variant]] tables" in text and "a [grid] table of lists" in text
    assert "…" not in r.stdout and max(len(line) for line in r.stdout.splitlines()) <= 80
