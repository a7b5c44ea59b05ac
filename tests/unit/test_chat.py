"""``geoguide chat`` driven through stdin: a photo, an answer, follow-ups, and a session resumed
after the process restarts (state comes back from the SQLite checkpoint database)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from tests.synthetic import place_image


def _chat(args: list[str], stdin: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "geoguide", "chat", *args], input=stdin, capture_output=True,
                          text=True, timeout=240)


def test_chat_session_survives_restart(synthetic_index, tmp_path):
    photo = tmp_path / "q_paris.jpg"
    place_image(0, variant=7).save(photo, quality=95)
    replay = tmp_path / "prior.csv"
    replay.write_text("IMG_ID,LAT_pred,LON_pred,location,success,model_name\nq_paris.jpg,48.80,2.30,Paris,True,t\n")
    common = ["--index", str(synthetic_index.root), "--vlm", f"replay:{replay}", "--db", str(tmp_path / "s.sqlite")]

    unknown = _chat([*common, "--session", "nope"], "/quit\n")
    assert unknown.returncode == 2 and "no chat session 'nope'" in unknown.stderr  # not a new empty session

    first = _chat([str(photo), *common], "why not Spain?\nlook near Madrid instead\n/quit\n")
    assert first.returncode == 0, first.stderr
    out = first.stdout
    sid = re.search(r"session (\w+) \(resume later", out).group(1)
    hint = out.strip().splitlines()[-1]
    assert hint.startswith("bye — resume with: geoguide chat") and f"--session {sid}" in hint
    assert f"--vlm replay:{replay}" in hint and f"--index {synthetic_index.root.resolve()}" in hint
    assert "Answer: 48.8" in out
    assert "for my answer" in out and "did not name Spain" in out  # Spain searched and weighed
    assert "within 150 km of Madrid" in out and "New answer" in out
    assert "perceive" in first.stderr and "[search_submap]" in first.stderr  # steps streamed as they happen

    common += ["--session", sid]
    second = _chat(common, "/show\nwhy not Japan?\n")
    assert second.returncode == 0, second.stderr
    assert f"resumed session {sid}" in second.stdout and "warning" not in second.stderr
    out = second.stdout
    start = out.index('{\n  "image"')
    shown = json.loads(out[start: out.index("\n}\n", start) + 2])
    # the follow-up's search near Madrid was saved in the session and is still there
    assert shown["trail"][-1]["reason"] == "user: look near Madrid"
    assert "did not name Japan" in second.stdout

    other_csv = tmp_path / "other.csv"
    other_csv.write_text(replay.read_text())
    other = _chat([*common[:3], f"replay:{other_csv}", *common[4:]], "/quit\n")
    assert "warning: session" in other.stderr and "vlm" in other.stderr  # says what differs


def test_chat_bad_image_does_not_end_session(synthetic_index, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    r = _chat(["--index", str(synthetic_index.root), "--db", str(tmp_path / "s.sqlite")],
              f"/image {bad}\nhello\n/quit\n")
    assert r.returncode == 0
    assert "not a recognised image" in r.stderr and "Attach a photo first" in r.stdout
