"""Sessions in a real PostgreSQL server (``--state-url``): they resume in another process, a
doctored checkpoint there is refused like a doctored SQLite file, a turn's lock dies with its
holder (``kill -9``) in both databases, and a database that is unreachable or goes down is one
line (exit 3) or a 503, never a traceback or an acknowledged turn that was not kept."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest

from geoguide.agent.backends import make_backend
from geoguide.agent.chat import ChatSession, SessionError
from geoguide.agent.config import AgentConfig
from geoguide.agent.context import AgentContext
from geoguide.agent.session_db import SessionBusy, SessionDatabaseError, open_session_database
from tests.doctored import assert_refused_and_ran_nothing, evil_pickle
from tests.serving import free_port
from tests.synthetic import place_image

pytestmark = pytest.mark.integration


@pytest.fixture
def ctx(synthetic_index) -> AgentContext:
    return AgentContext(index=synthetic_index, backend=make_backend("none"), config=AgentConfig())


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "q_paris.jpg"
    place_image(0, variant=7).save(path, quality=95)
    return path


def test_a_session_resumes_from_postgres_in_another_process(ctx, photo, postgres_url, tmp_path):
    chat = ChatSession(ctx, postgres_url, "pg1")
    chat.attach(photo)
    chat.ask("why there?")
    thread = chat.thread_id
    chat.close()

    # a new process: the CLI resumes it by id from the database alone
    run = subprocess.run([sys.executable, "-m", "geoguide", "chat", "--index", str(ctx.index.root), "--vlm", "none",
                          "--state-url", postgres_url, "--session", "pg1"], input="/show\n", capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "resumed session pg1" in run.stdout and '"lat"' in run.stdout
    assert f"--state-url {postgres_url} --session pg1" in run.stdout  # the goodbye line says how to come back
    again = ChatSession(ctx, postgres_url, "pg1", must_exist=True)
    try:
        st = again.state()
        assert again.thread_id == thread == "pg1/photo-1"
        assert [m["text"] for m in st.chat if m["role"] == "user"] == [f"/image {photo}", "why there?"]
    finally:
        again.close()
    with pytest.raises(SessionError, match=r"no chat session 'nope' .*recent: pg1"):
        ChatSession(ctx, postgres_url, "nope", must_exist=True)


def test_a_doctored_checkpoint_in_postgres_runs_nothing(ctx, photo, postgres_url, tmp_path):
    import psycopg

    chat = ChatSession(ctx, postgres_url, "pg2")
    chat.attach(photo)
    chat.close()
    marker = tmp_path / "MARKER"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        changed = conn.execute("UPDATE checkpoint_blobs SET type = 'pickle', blob = %s WHERE thread_id LIKE 'pg2/%%'",
                               (evil_pickle(marker),)).rowcount
    assert changed > 0
    assert_refused_and_ran_nothing(ctx, postgres_url, "pg2", marker)


HOLD = textwrap.dedent("""
    import sys, time
    from geoguide.agent.session_db import open_session_database
    db = open_session_database(sys.argv[1])
    with db.turn("s1", 5):
        print("held", flush=True)
        time.sleep(120)
""")


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_a_turn_lock_dies_with_its_holder(database, tmp_path, request):
    where = str(tmp_path / "sessions.sqlite") if database == "sqlite" else request.getfixturevalue("postgres_url")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, where], stdout=subprocess.PIPE, text=True)
    db = open_session_database(where)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(SessionBusy, match="s1 is busy"), db.turn("s1", 0.3):
            pass
        with db.turn("s2", 0.3):  # another session is not held up
            pass
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
        with db.turn("s1", 10):  # released by the OS (flock) or the server (the connection died)
            pass
    finally:
        holder.kill()
        db.close()


def test_an_unreachable_database_is_one_line_exit_3(synthetic_index):
    url = f"postgresql://geoguide:secret@127.0.0.1:{free_port()}/sessions"
    run = subprocess.run([sys.executable, "-m", "geoguide", "chat", "--index", str(synthetic_index.root),
                          "--vlm", "none", "--state-url", url], input="", capture_output=True, text=True, timeout=120)
    assert run.returncode == 3, run.stderr
    assert run.stderr.strip().splitlines()[-1].startswith("geoguide: error: cannot use the session database "
                                                          "postgresql://geoguide:***@127.0.0.1")
    assert "secret" not in run.stderr and "Traceback" not in run.stderr


def test_a_database_that_goes_down_is_503_not_a_lost_turn(ctx, photo, tmp_path):
    from fastapi.testclient import TestClient

    from geoguide.app.server import create_app
    from tests.postgres import new_database, postgres_server

    with postgres_server() as server:  # its own server: this test stops it
        url = new_database(server)
        app = create_app(ctx, state_dir=tmp_path / "state", state_url=url)
        client = TestClient(app, base_url="http://localhost:8000")
        r = client.post("/api/locate", files={"image": ("q.jpg", photo.read_bytes(), "image/jpeg")})
        assert r.status_code == 200, r.text
        sid = r.headers["X-Geoguide-Session"]
        assert client.post(f"/api/sessions/{sid}/messages", json={"text": "first"}).status_code == 200
        _stop(server)
        r = client.post(f"/api/sessions/{sid}/messages", json={"text": "second"})
        assert r.status_code == 503 and "session database" in r.json()["detail"], r.text
        app.state.sessions.close()
    with pytest.raises(SessionDatabaseError):
        open_session_database(url)


def _stop(server_url: str) -> None:
    """Stop the PostgreSQL server at ``server_url`` at once, as a crash would."""
    import psycopg

    with psycopg.connect(server_url, autocommit=True) as conn:
        data = conn.execute("SHOW data_directory").fetchone()[0]
    from tests.postgres import _as_server_user, postgres_bin

    subprocess.run(_as_server_user([str(postgres_bin() / "pg_ctl"), "-D", data, "-m", "immediate", "-w", "stop"]),
                   check=True, capture_output=True, cwd="/")


def test_a_lost_connection_after_the_turn_does_not_fail_the_kept_turn(postgres_url):
    """The turn's writes are done when its unlock fails: the reply must not become a 503 (a retry
    would then repeat the follow-up); closing the connection drops the lock anyway."""
    import psycopg

    db = open_session_database(postgres_url)
    try:
        with db.turn("s1", 5), psycopg.connect(postgres_url, autocommit=True) as admin:  # the holder's dies
            assert admin.execute("SELECT pg_terminate_backend(pid) FROM pg_locks "
                                 "WHERE locktype = 'advisory' AND granted").rowcount == 1
        with db.turn("s1", 5):
            pass
    finally:
        db.close()


@pytest.mark.parametrize("url", ["postgresql://u:p@ss@127.0.0.1:{port}/db", "postgresql://u@127.0.0.1:{port}/db?password=p@ss",
                                 "postgresql://u:p%zzss@127.0.0.1:{port}/db"])
def test_a_password_never_reaches_a_message(url):
    with pytest.raises(SessionDatabaseError) as err:
        open_session_database(url.format(port=free_port()))
    assert "p@ss" not in str(err.value) and "p%zzss" not in str(err.value) and "ss@" not in str(err.value)
    assert "***" in str(err.value)


def test_the_terminal_resumes_a_web_session_taken_on_another_machine(ctx, photo, postgres_url, tmp_path):
    """A session made by a server (machine A's state folder) resumed by ``geoguide chat`` elsewhere:
    the photo comes from the database, so the follow-up can search it again."""
    from geoguide.app.web_sessions import SessionStore

    store = SessionStore(ctx, tmp_path / "machine-a", ctx.index.descriptor(), state_url=postgres_url)
    try:
        sid = store.locate(photo.read_bytes(), "q_paris.jpg").session_id
    finally:
        store.close()
    shutil.rmtree(tmp_path / "machine-a")  # nothing of machine A is left
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "machine-b")}
    run = subprocess.run([sys.executable, "-m", "geoguide", "chat", "--index", str(ctx.index.root), "--vlm", "none",
                          "--state-url", postgres_url, "--session", sid], input="look near Lyon instead\n/show\n",
                         capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode == 0, run.stderr
    here = tmp_path / "machine-b" / "geoguide" / "photos" / sid / "photo-1"
    assert here.read_bytes() == photo.read_bytes()
    assert '"image": "q_paris.jpg"' in run.stdout or "q_paris.jpg" in run.stdout


def test_a_wrong_state_url_is_the_users_setting_exit_2(synthetic_index):
    run = subprocess.run([sys.executable, "-m", "geoguide", "chat", "--index", str(synthetic_index.root),
                          "--vlm", "none", "--state-url", "mysql://u@h/db"], input="", capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip().splitlines()[-1] == ("geoguide: error: session database 'mysql://u@h/db': unknown "
                                                   "scheme 'mysql'; use one of postgresql, sqlite")


def test_servers_starting_at_once_on_a_fresh_database_both_open_it(postgres_server_url):
    """Two servers creating the tables at the same moment: with a waiting pg_advisory_lock, half
    the rounds ended in PostgreSQL's 'deadlock detected' (8 of 15 in two processes), because the
    first one's CREATE INDEX CONCURRENTLY waits for the second one's open wait; polled, none do."""
    import threading

    from tests.postgres import new_database

    for _ in range(4):
        url = new_database(postgres_server_url)
        gate, errors = threading.Barrier(2), []

        def open_at_once(url=url, gate=gate, errors=errors) -> None:
            gate.wait()
            try:
                open_session_database(url).close()
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=open_at_once) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
