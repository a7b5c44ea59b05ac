"""A real model behind a real server: SmolLM2-135M-Instruct served by llama.cpp (xllamacpp) plans
with ``--policy llm`` for ``geoguide locate`` and ``geoguide chat`` on real photos of the shared
split, perception replayed from the recorded Gemini answers.

The model is tiny and plans badly; what is proven is that everything between geoguide and a real
server is real: JSON-constrained actions reach the tools, invalid ones come back to the model as
errors, and the run ends within its caps with a valid prediction. SmolLM2's chat template ignores
``tools=`` and the server has no vision: the planner detects both on its first calls (``tool_mode=auto``,
the default) and goes on in JSON-schema mode, text-only, with no option from the user.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from geoguide.app.cli import main
from geoguide.indices.photosets import shared_data_root
from tests.llama_server import llama_server  # noqa: F401  (the session fixture)

ROOT = shared_data_root()
REPO = Path(__file__).resolve().parents[2]
PRIOR = ROOT / "prior_gemini-2.0-flash.csv"
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not (ROOT / "labels.csv").exists(),
                       reason=f"shared split not found at {ROOT} (set GEOGUIDE_DATA to the im2gps3k folder)"),
]
N_REFS = 200
PLANNER_OPTS = ["--planner-opt", "max_tokens=96", "--planner-opt", "temperature=0"]  # speed and repeatability


@pytest.fixture(scope="module")
def shared_index(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("real-model") / "idx"
    rc = main(["index", "build", "--images", str(ROOT / "images"), "--labels", str(ROOT / "labels.csv"),
               "--out", str(out), "--descriptor", "thumbnail", "--submaps", "country,kmeans:10",
               "--limit", str(N_REFS)])
    assert rc == 0
    return out


def _queries(n: int) -> list[dict]:
    with open(ROOT / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))[:N_REFS]
    return rows[:: max(1, N_REFS // n)][:n]


def _geoguide(*args, stdin: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "XDG_CACHE_HOME": os.environ.get("PYTEST_TMP", "/tmp")}
    return subprocess.run([sys.executable, "-m", "geoguide", *map(str, args)], capture_output=True, text=True,
                          input=stdin, timeout=timeout, env=env, cwd=REPO)


def test_locate_with_a_real_model_planning(shared_index, llama_server, tmp_path):  # noqa: F811
    for row in _queries(1):
        start = time.monotonic()
        r = _geoguide("locate", ROOT / "images" / row["IMG_ID"], "--index", shared_index, "--vlm", f"replay:{PRIOR}",
                      "--policy", "llm", "--planner", llama_server.spec, *PLANNER_OPTS, "--exclude-author",
                      row["AUTHOR"], "--max-seconds", "45", "--cache", tmp_path / "c.sqlite", "--json")
        took = time.monotonic() - start
        assert r.returncode == 0, r.stderr[-2000:]
        pred = json.loads(r.stdout)
        print(f"\n{row['IMG_ID']}: {took:.1f} s, {pred['steps']} steps, {pred['tool_calls']} tool calls, "
              f"answer {pred['lat']}, {pred['lon']} via {pred['source']}; trail {[s['submap_id'] for s in pred['trail']]}; "
              f"notes {pred['notes']}")
        assert pred["planner"] == llama_server.spec and pred["policy"] == "llm"
        assert pred["usage"]["model_calls"] >= 2  # the replayed prior and at least one real planner call
        assert pred["steps"] <= 12 and pred["tool_calls"] <= 12 and took < 45 + 30
        assert pred["lat"] is None or -90 <= pred["lat"] <= 90
        assert all(c["author"] != row["AUTHOR"] for c in pred["top_candidates"])  # the leakage rule held


def test_chat_follow_up_with_a_real_model(shared_index, llama_server, tmp_path):  # noqa: F811
    row = _queries(1)[0]
    r = _geoguide("chat", ROOT / "images" / row["IMG_ID"], "--index", shared_index, "--vlm", f"replay:{PRIOR}",
                  "--policy", "llm", "--planner", llama_server.spec, *PLANNER_OPTS, "--exclude-author", row["AUTHOR"],
                  "--db", tmp_path / "sessions.sqlite", "--cache", tmp_path / "c.sqlite", "--max-seconds", "45",
                  stdin="why not Portugal?\nlook near Lyon instead\n/quit\n")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Answer:" in r.stdout or "No answer" in r.stdout
    assert "Portugal" in r.stdout and "Lyon" in r.stdout
    print("\n" + r.stdout[-1500:])
