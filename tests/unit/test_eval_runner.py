"""Benchmark runner, prior corruption, oracle, and the ``eval`` / ``ablate`` commands, on the synthetic set."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

import geoguide.eval.runner as runner
from geoguide.agent.backends import PriorProvider, make_backend
from geoguide.agent.config import AgentConfig
from geoguide.agent.context import AgentContext
from geoguide.agent.schemas import CountryGuess, Perception, PerceptionOutcome
from geoguide.app.cli import main
from geoguide.eval.corruption import CorruptedPriorBackend, CorruptionSpec
from geoguide.eval.oracle import oracle_matches, run_oracle
from geoguide.eval.records import PREDICTIONS, load_records
from geoguide.eval.runner import RunMismatchError, run_eval
from geoguide.geo.geometry import haversine_km
from geoguide.indices.photosets import load_dataset
from tests.synthetic import PLACES

REPO = Path(__file__).resolve().parents[2]
SUMMARY_KEYS = {
    "n",
    "answered",
    "accuracy",
    "ci95",
    "median_km",
    "mean_km",
    "geoscore",
    "latency_s",
    "failed",
    "model_calls",
    "cost_usd_per_image",
    "cost_usd_total",
    "prior_corrupted",
}


@pytest.fixture(scope="module")
def replay(synthetic_refs, tmp_path_factory) -> Path:
    """Recorded priors: shot 0 near the truth, shot 1 far off, shot 2 no answer."""
    _, samples = synthetic_refs
    path = tmp_path_factory.mktemp("replay") / "prior.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["IMG_ID", "LAT_pred", "LON_pred", "location", "success", "model_name"])
        for s in samples:
            shot = int(s.image_id.split("_")[1][0])
            far = PLACES[7] if s.lon > -20 and s.lon < 60 else PLACES[0]
            lat, lon = (s.lat + 0.05, s.lon + 0.05) if shot == 0 else (far[1], far[2])
            w.writerow([s.image_id, lat, lon, "somewhere", "False" if shot == 2 else "True", "test-vlm"])
    return path


def _ctx(index, replay: Path, **cfg) -> AgentContext:
    return AgentContext(index=index, backend=make_backend(f"replay:{replay}"), config=AgentConfig(**cfg))


@pytest.fixture
def calls(monkeypatch) -> list[str]:
    """Image ids the runner sent to the agent, in order."""
    seen: list[str] = []
    real = runner.locate

    def counting(ctx, path, image_id=None, **kw):
        seen.append(image_id)
        return real(ctx, path, image_id=image_id, **kw)

    monkeypatch.setattr(runner, "locate", counting)
    return seen


def _lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / PREDICTIONS).read_text().splitlines()]


def test_one_line_per_image_and_summary_matches_hand_check(synthetic_index, synthetic_refs, replay, tmp_path):
    _, samples = synthetic_refs
    s = run_eval(samples, _ctx(synthetic_index, replay), tmp_path, exclude_same_author=True)
    lines = _lines(tmp_path)
    assert len(lines) == 24 and len({r["image_id"] for r in lines}) == 24
    truth = {x.image_id: x for x in samples}
    err = [
        float(haversine_km(truth[r["image_id"]].lat, truth[r["image_id"]].lon, r["lat"], r["lon"]))
        if r["lat"] is not None
        else np.inf
        for r in lines
    ]
    for t in (1, 25, 200, 750, 2500):
        assert s.accuracy[f"{t:g}"] == pytest.approx(100 * np.mean(np.array(err) < t))
    assert s.n == 24 and s.answered == sum(np.isfinite(err)) and s.failed == 0
    assert 0 < s.accuracy["2500"] < 100  # the far priors make this a real test, not all-hits
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert set(on_disk) >= SUMMARY_KEYS and set(on_disk["accuracy"]) == {"1", "25", "200", "750", "2500"}
    assert set(on_disk["latency_s"]) == {"agent_s", "total_s"} and on_disk["latency_s"]["agent_s"]["p50"] > 0
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["config"]["vlm"].startswith("replay:") and run["config"]["exclude_same_author"] is True
    assert run["config"]["index"]["descriptor"]["name"] == "thumbnail"
    assert "perceive/v1" in run["prompts"] and "numpy" in run["versions"] and "git_commit" in run
    assert run["sessions"][-1]["finished_utc"] and "| 25 km |" in (tmp_path / "summary.md").read_text()
    r0 = lines[0]
    assert {"perceive_s", "agent_s", "total_s"} <= set(r0["timings"]) and r0["usage"]["model_calls"] >= 0


def test_exclude_same_author_is_honoured(synthetic_index, synthetic_refs, replay, tmp_path):
    _, samples = synthetic_refs
    run_eval(samples, _ctx(synthetic_index, replay), tmp_path / "loo", exclude_same_author=True)
    for r in _lines(tmp_path / "loo"):
        assert r["top_refs"], r["image_id"]
        assert all(c["author"] != r["author"] and c["ref_id"] != r["image_id"] for c in r["top_refs"])
    # Without the strict rule the self-match guard still keeps each photo from finding itself,
    # but its photographer's other photos come back (so the strict rule has teeth).
    run_eval(samples, _ctx(synthetic_index, replay), tmp_path / "leaky", limit=6)
    leaky = _lines(tmp_path / "leaky")
    assert all(c["ref_id"] != r["image_id"] for r in leaky for c in r["top_refs"])
    assert any(c["author"] == r["author"] for r in leaky for c in r["top_refs"])


def test_resume_skips_finished_photos(synthetic_index, synthetic_refs, replay, tmp_path, calls):
    _, samples = synthetic_refs
    ctx = _ctx(synthetic_index, replay)
    first = run_eval(samples, ctx, tmp_path, exclude_same_author=True, limit=10)
    assert first.n == 10 and len(calls) == 10
    before = {r["image_id"]: r["finished_utc"] for r in _lines(tmp_path)}
    full = run_eval(samples, ctx, tmp_path, exclude_same_author=True)
    assert len(calls) == 24 and set(calls[10:]).isdisjoint(calls[:10])
    lines = _lines(tmp_path)
    assert len(lines) == 24 and len({r["image_id"] for r in lines}) == 24
    assert all(r["finished_utc"] == before[r["image_id"]] for r in lines if r["image_id"] in before)
    assert full.n == 24
    assert len(json.loads((tmp_path / "run.json").read_text())["sessions"]) == 2


def test_torn_last_line_is_dropped_and_rerun(synthetic_index, synthetic_refs, replay, tmp_path, calls):
    _, samples = synthetic_refs
    ctx = _ctx(synthetic_index, replay)
    run_eval(samples, ctx, tmp_path, exclude_same_author=True)
    raw = (tmp_path / PREDICTIONS).read_text().splitlines(keepends=True)
    (tmp_path / PREDICTIONS).write_text("".join(raw[:20]) + raw[20][: len(raw[20]) // 2])  # killed mid-write
    assert len(load_records(tmp_path / PREDICTIONS)) == 20
    calls.clear()
    s = run_eval(samples, ctx, tmp_path, exclude_same_author=True)
    assert sorted(calls) == sorted(json.loads(x)["image_id"] for x in raw[20:])
    lines = _lines(tmp_path)  # every line parses
    assert len(lines) == 24 and len({r["image_id"] for r in lines}) == 24 and s.n == 24


def test_corrupt_image_is_a_recorded_miss(synthetic_index, synthetic_refs, replay, tmp_path):
    root, _ = synthetic_refs
    images = tmp_path / "images"
    shutil.copytree(root / "images", images)
    (images / "rome_1.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    samples = load_dataset("csv", labels=root / "labels.csv", images=images).samples
    s = run_eval(samples, _ctx(synthetic_index, replay), tmp_path / "run", exclude_same_author=True)
    bad = [r for r in _lines(tmp_path / "run") if r["error"]]
    assert [r["image_id"] for r in bad] == ["rome_1.jpg"] and bad[0]["lat"] is None
    assert "ImageLoadError" in bad[0]["error"]
    assert s.n == 24 and s.failed == 1 and s.answered == 23


def test_different_config_in_same_dir_is_refused(synthetic_index, synthetic_refs, replay, tmp_path):
    _, samples = synthetic_refs
    run_eval(samples, _ctx(synthetic_index, replay), tmp_path, limit=2)
    with pytest.raises(RunMismatchError, match=r"agent\.rerank\.enabled"):
        run_eval(samples, _ctx(synthetic_index, replay, rerank={"enabled": False}), tmp_path, limit=2)
    with pytest.raises(RunMismatchError, match="exclude_same_author"):
        run_eval(samples, _ctx(synthetic_index, replay), tmp_path, limit=2, exclude_same_author=True)
    # A run older than a config option (absent from its run.json) resumes when the option is at its default.
    run = json.loads((tmp_path / "run.json").read_text())
    del run["config"]["agent"]["global_probe"]
    (tmp_path / "run.json").write_text(json.dumps(run))
    assert run_eval(samples, _ctx(synthetic_index, replay), tmp_path, limit=3).n == 3
    with pytest.raises(RunMismatchError, match="global_probe"):
        run_eval(samples, _ctx(synthetic_index, replay, global_probe=False), tmp_path, limit=3)


# --------------------------------------------------------------------------------- corruption


class _FixedPrior(PriorProvider):
    """Paris, for every photo."""

    kind: ClassVar[str] = "fixed"

    def __init__(self) -> None:
        super().__init__("paris")

    def perceive(self, image, prompt_text=None, *, image_id=None, deadline=None) -> PerceptionOutcome:
        if image_id == "no-prior":
            return PerceptionOutcome(error="model gave nothing")
        return PerceptionOutcome(
            perception=Perception(
                countries=[CountryGuess(iso2="FR", probability=0.8)], lat=48.85, lon=2.35, rationale="Paris"
            )
        )


def _corrupt(spec: CorruptionSpec, ids: list[str]) -> dict[str, Perception | None]:
    b = CorruptedPriorBackend(_FixedPrior(), spec)
    out = {}
    for i in ids:
        p = b.perceive(None, image_id=i).perception
        out[i] = p if b.applied(i) is not None else None
    return out


def test_corruption_is_seeded_and_hits_about_p():
    from geoguide.geo import countries

    ids = [f"img{i}.jpg" for i in range(400)]
    spec = CorruptionSpec(p=0.3, mode="random", seed=7)
    a, b = _corrupt(spec, ids), _corrupt(spec, ids)
    assert {k: v and v.model_dump() for k, v in a.items()} == {k: v and v.model_dump() for k, v in b.items()}
    hit = {k for k, v in a.items() if v is not None}
    assert 0.22 < len(hit) / len(ids) < 0.38
    for p in (a[k] for k in hit):
        iso = p.countries[0].iso2
        assert iso != "FR" and (p.lat, p.lon) == (countries()[iso].lat, countries()[iso].lon)
        assert "Paris" not in p.rationale
    other_seed = {k for k, v in _corrupt(spec.model_copy(update={"seed": 8}), ids).items() if v is not None}
    assert other_seed != hit
    low = {k for k, v in _corrupt(CorruptionSpec(p=0.2, mode="random", seed=7), ids).items() if v is not None}
    assert low < hit  # a p-sweep corrupts nested sets of photos


def test_corruption_modes_neighbour_and_noise():
    ids = [f"img{i}.jpg" for i in range(200)]
    nb = _corrupt(CorruptionSpec(p=1.0, mode="neighbour", seed=1), ids[:20])
    assert {p.countries[0].iso2 for p in nb.values()} <= {"AD", "BE", "CH", "DE", "ES", "IT", "LU", "MC"}
    noisy = _corrupt(CorruptionSpec(p=1.0, mode="none", noise_km=50.0, seed=1), ids)
    moved = [float(haversine_km(48.85, 2.35, p.lat, p.lon)) for p in noisy.values()]
    assert 45 < np.mean(moved) < 80  # Rayleigh mean of sigma = 50 km per axis: 62.7 km
    b = CorruptedPriorBackend(_FixedPrior(), CorruptionSpec(p=1.0, mode="random"))
    assert b.perceive(None, image_id="no-prior").perception is None and b.applied("no-prior") is None
    # It corrupts priors only: a run's planner is still the model it wraps (none here).
    assert b.chat_backend() is None
    chatty = make_backend("openai-compatible:http://127.0.0.1:9/v1:m")
    assert CorruptedPriorBackend(chatty, CorruptionSpec(p=1.0, mode="random")).chat_backend() is chatty
    with pytest.raises(ValueError, match="noise_km"):
        CorruptionSpec(p=0.5, mode="none")


# ------------------------------------------------------------------------------------- oracle


def test_oracle_is_nearest_other_photographer(synthetic_index, synthetic_refs, tmp_path):
    _, samples = synthetic_refs
    refs = synthetic_index.refs
    lat, lon = np.asarray(refs["lat"]), np.asarray(refs["lon"])
    authors = np.array([a.decode() for a in refs["author"]])
    for m, s in zip(oracle_matches(samples, synthetic_index), samples, strict=True):
        d = haversine_km(s.lat, s.lon, lat, lon)
        d[authors == s.author] = np.inf
        assert m.error_km == pytest.approx(d.min(), abs=1e-6)
    summary = run_oracle(samples, synthetic_index, tmp_path, exclude_same_author=True)
    assert summary.n == 24 and summary.accuracy["25"] == 100.0 and summary.accuracy["1"] < 100.0
    assert all(r["source"] == "oracle" for r in _lines(tmp_path))


# ---------------------------------------------------------------------------------------- CLI


def _eval_argv(root: Path, index: Path, replay: Path, out: Path, *extra: str) -> list[str]:
    return [
        "eval",
        "--images",
        str(root / "images"),
        "--labels",
        str(root / "labels.csv"),
        "--index",
        str(index),
        "--vlm",
        f"replay:{replay}",
        "--out",
        str(out),
        *extra,
    ]


def test_cli_eval_end_to_end(synthetic_index, synthetic_refs, replay, tmp_path, capsys):
    root, _ = synthetic_refs
    argv = _eval_argv(
        root,
        synthetic_index.root,
        replay,
        tmp_path,
        "--exclude-same-author",
        "--limit",
        "8",
        "--set",
        "override.margin=0.1",
        "--corrupt-prior",
        "0.9",
        "--corrupt-mode",
        "random",
        "--seed",
        "3",
    )
    assert main(argv) == 0
    assert "| 25 km |" in capsys.readouterr().out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary) >= SUMMARY_KEYS and summary["n"] == 8
    config = json.loads((tmp_path / "run.json").read_text())["config"]
    assert config["agent"]["override"]["margin"] == 0.1
    assert config["prior_corruption"] == {"p": 0.9, "mode": "random", "noise_km": 0.0, "seed": 3}
    lines = _lines(tmp_path)
    assert 0 < sum(r["prior_corrupted"] for r in lines) == summary["prior_corrupted"]
    # user mistakes: one line, exit 2
    assert main([*argv, "--no-rerank"]) == 2
    assert "holds a different run" in capsys.readouterr().err
    assert main(_eval_argv(root, synthetic_index.root, replay, tmp_path / "x", "--set", "overide.k=3")) == 2
    assert "unknown setting 'overide.k'" in capsys.readouterr().err


def test_cli_ablate_writes_comparison_and_plots(synthetic_index, synthetic_refs, replay, tmp_path, calls):
    root, _ = synthetic_refs
    plan = tmp_path / "plan.toml"
    plan.write_text(f"""
[base]
images = "{root / "images"}"
labels = "{root / "labels.csv"}"
index = "{synthetic_index.root}"
vlm = "replay:{replay}"
exclude_same_author = true
limit = 8
corrupt_mode = "random"

[[variant]]
name = "rerank"

[[variant]]
name = "no-rerank"
rerank = false

[[variant]]
name = "oracle"
oracle = true

[grid]
corrupt_prior = [0.0, 0.5]
""")
    out = tmp_path / "out"
    assert main(["ablate", str(plan), "--out", str(out)]) == 0
    names = [
        "rerank__corrupt_prior=0",
        "rerank__corrupt_prior=0.5",
        "no-rerank__corrupt_prior=0",
        "no-rerank__corrupt_prior=0.5",
        "oracle__corrupt_prior=0",
        "oracle__corrupt_prior=0.5",
    ]
    rows = list(csv.DictReader((out / "comparison.csv").read_text().splitlines()))
    assert [r["variant"] for r in rows] == names and all(r["n"] == "8" for r in rows)
    assert {
        "acc_1km",
        "acc_25km",
        "acc_200km",
        "acc_750km",
        "acc_2500km",
        "median_km",
        "geoscore",
        "agent_s_p50",
        "cost_usd_per_image",
    } <= set(rows[0])
    assert (
        json.loads((out / names[2] / "run.json").read_text())["config"]["agent"]["rerank"]["enabled"] is False
    )
    assert json.loads((out / names[4] / "run.json").read_text())["config"]["kind"] == "oracle"
    md = (out / "comparison.md").read_text()
    assert all(n in md for n in names) and "accuracy_vs_corruption.png" in md
    for png in ("accuracy_vs_threshold.png", "error_cdf.png", "accuracy_vs_corruption.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    assert len(calls) == 32
    assert main(["ablate", str(plan), "--out", str(out)]) == 0  # every variant resumes: nothing recomputed
    assert len(calls) == 32


def test_killed_eval_process_resumes_cleanly(synthetic_index, synthetic_refs, fake_openai, tmp_path):
    """SIGKILL a real ``python -m app eval`` mid-run, run it again: every photo once, no torn line."""
    from fakes.openai_server import delayed, reply_json

    root, _ = synthetic_refs
    prior = {"countries": [{"iso2": "FR", "probability": 0.9}], "lat": 48.9, "lon": 2.4, "rationale": "x"}
    fake_openai.script(*[delayed(0.25, reply_json(prior)) for _ in range(20)])
    out = tmp_path / "run"
    argv = [
        sys.executable,
        "-m",
        "geoguide",
        *_eval_argv(
            root,
            synthetic_index.root,
            Path("unused"),
            out,
            "--limit",
            "6",
            "--cache",
            "none",
            "--workers",
            "1",
        ),
    ]
    argv[argv.index("--vlm") + 1] = f"openai-compatible:{fake_openai.base_url}:fake-vlm"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        pred = out / PREDICTIONS
        if pred.exists() and pred.read_bytes().count(b"\n") >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    done = load_records(out / PREDICTIONS)
    assert 2 <= len(done) < 6
    assert main(argv[3:]) == 0  # the same command resumes (in-process: a second interpreter start is slow)
    lines = _lines(out)
    assert len(lines) == 6 and len({r["image_id"] for r in lines}) == 6
    assert all(r["error"] is None and r["prior_lat"] == 48.9 for r in lines)
    assert json.loads((out / "summary.json").read_text())["n"] == 6


def test_workers_give_the_same_records(synthetic_index, synthetic_refs, replay, tmp_path):
    _, samples = synthetic_refs
    ctx = _ctx(synthetic_index, replay)
    a = run_eval(samples, ctx, tmp_path / "a", exclude_same_author=True, limit=12, workers=4)
    b = run_eval(samples, ctx, tmp_path / "b", exclude_same_author=True, limit=12, workers=1)

    def answers(out: Path) -> dict:
        return {
            r["image_id"]: (r["lat"], r["lon"], r["trail"], [c["ref_id"] for c in r["top_refs"]])
            for r in _lines(out)
        }

    assert answers(tmp_path / "a") == answers(tmp_path / "b") and a.accuracy == b.accuracy
    assert ctx.config.exclude_authors == [] and ctx.config.exclude_ids == []  # the shared config is untouched


def test_failing_photo_is_final_after_max_attempts_and_one_line_each(
    synthetic_index, synthetic_refs, replay, tmp_path, calls
):
    """A photo that keeps failing is retried by the next runs, then stays one recorded miss."""
    root, samples = synthetic_refs
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg at all")
    bad = samples[0].model_copy(update={"image_id": "broken.jpg", "image_path": broken})
    chosen = [bad, *samples[1:4]]
    ctx = _ctx(synthetic_index, replay)
    for _ in range(runner.MAX_PHOTO_ATTEMPTS + 2):
        s = run_eval(chosen, ctx, tmp_path / "run", exclude_same_author=True)
    assert calls.count("broken.jpg") == runner.MAX_PHOTO_ATTEMPTS
    lines = _lines(tmp_path / "run")
    assert len(lines) == 4 and len({r["image_id"] for r in lines}) == 4
    rec = next(r for r in lines if r["image_id"] == "broken.jpg")
    assert rec["error"] and rec["attempts"] == runner.MAX_PHOTO_ATTEMPTS
    assert s.failed == 1 and s.evaluated == 3 and s.n == 4


def test_interrupted_run_writes_the_summary_of_what_finished(
    synthetic_index, synthetic_refs, replay, tmp_path, monkeypatch
):
    _, samples = synthetic_refs
    real = runner.locate
    seen: list[str] = []

    def interrupting(ctx, path, image_id=None, **kw):
        if len(seen) == 5:
            raise KeyboardInterrupt
        seen.append(image_id)
        return real(ctx, path, image_id=image_id, **kw)

    monkeypatch.setattr(runner, "locate", interrupting)
    with pytest.raises(KeyboardInterrupt):
        run_eval(samples, _ctx(synthetic_index, replay), tmp_path, exclude_same_author=True)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["evaluated"] == 5 and summary["not_run"] == len(samples) - 5 and summary["n"] == len(samples)
    assert json.loads((tmp_path / "run.json").read_text())["sessions"][-1]["outcome"] == "interrupted"


def test_dropped_label_rows_count_as_misses(synthetic_index, synthetic_refs, replay, tmp_path):
    from geoguide.eval.runner import DatasetRef
    from geoguide.indices.photosets import LoadReport

    _, samples = synthetic_refs
    report = LoadReport(dataset="csv", source="labels.csv", n_ok=len(samples), n_bad=2,
                        problems=["line 3: bad latitude 'x'", "line 9: image missing"])
    ref = DatasetRef(name="csv", labels="labels.csv", report=report)
    full = run_eval(samples, _ctx(synthetic_index, replay), tmp_path / "a", exclude_same_author=True)
    s = run_eval(samples, _ctx(synthetic_index, replay), tmp_path / "b", exclude_same_author=True, dataset=ref)
    assert s.n == full.n + 2 and s.dropped == 2 and s.labels_read == len(samples) + 2
    for t, acc in s.accuracy.items():
        assert acc == pytest.approx(full.accuracy[t] * full.n / (full.n + 2))
    md = (tmp_path / "b" / "summary.md").read_text()
    assert "2 dropped at load" in md and "bad latitude" in md
    assert "photos without a prior" in md


def test_messy_labels_get_a_reason_per_row_and_count_as_misses(synthetic_index, synthetic_refs, tmp_path, capsys):
    """A BOM, an extra column, a unicode id, a duplicate id, NaN and out-of-range coordinates: every
    bad row is named with its line and reason in the summary, and all rows are in the denominator."""
    from tests.synthetic import place_image

    root, samples = synthetic_refs
    images = tmp_path / "images"
    shutil.copytree(root / "images", images)
    place_image(1, variant=9).save(images / "é_北京.jpg")
    good = [s for s in samples[:4]]
    rows = [f"{s.image_id},{s.author},{s.lat},{s.lon},x" for s in good]
    rows += [f"{good[0].image_id},{good[0].author},{good[0].lat},{good[0].lon},dup",  # line 6: duplicate id
             "é_北京.jpg,someone,nan,2.0,x",  # line 7: NaN
             "é_北京.jpg,someone,48.8,2.3,x",  # line 8: the same id again, now valid: kept
             f"{samples[5].image_id},a,95,2,x",  # line 9: latitude out of range
             f"{samples[6].image_id},a,40,200,x"]  # line 10: longitude out of range
    labels = tmp_path / "messy.csv"
    labels.write_text("\ufeffIMG_ID,AUTHOR,LAT,LON,EXTRA\n" + "\n".join(rows) + "\n", encoding="utf-8")
    out = tmp_path / "run"
    assert main(["eval", "--images", str(images), "--labels", str(labels), "--index", str(synthetic_index.root),
                 "--out", str(out), "--exclude-same-author"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    text = (out / "summary.md").read_text()
    assert summary["n"] == 9 and summary["answered"] == 5  # 4 good rows + the unicode id; 4 dropped
    for line, reason in [(6, "duplicate image id"), (7, "latitude nan"), (9, "latitude 95"), (10, "longitude 200")]:
        assert f"line {line}: {reason}" in text, (line, text)
    ids = [json.loads(x)["image_id"] for x in (out / PREDICTIONS).read_text().splitlines()]
    assert "é_北京.jpg" in ids and len(ids) == len(set(ids)) == 5


def test_a_resume_after_the_labels_were_edited_is_refused(synthetic_index, synthetic_refs, tmp_path, capsys):
    """The run's identity holds the labels' content, not only their path: a resume after an edit
    would otherwise keep the old truth in its records and summary, silently."""
    root, samples = synthetic_refs
    labels = tmp_path / "labels.csv"
    rows = [f"{s.image_id},{s.author},{s.lat},{s.lon}" for s in samples[:6]]
    labels.write_text("IMG_ID,AUTHOR,LAT,LON\n" + "\n".join(rows) + "\n")
    out = tmp_path / "run"
    argv = ["eval", "--images", str(root / "images"), "--labels", str(labels), "--index", str(synthetic_index.root),
            "--out", str(out), "--exclude-same-author"]
    assert main([*argv, "--limit", "3"]) == 0
    assert json.loads((out / "run.json").read_text())["config"]["dataset"]["labels_sha256"]
    assert main(argv) == 0  # the same file: resumes
    rows[0] = rows[0].rsplit(",", 2)[0] + ",10.0,10.0"  # a corrected truth for a photo already scored
    labels.write_text("IMG_ID,AUTHOR,LAT,LON\n" + "\n".join(rows) + "\n")
    capsys.readouterr()
    assert main(argv) == 2
    assert "the labels file changed since this run started" in capsys.readouterr().err


def test_cli_ablate_crosses_descriptors_builds_missing_indices_and_lists_the_skipped(
        synthetic_index, synthetic_refs, replay, tmp_path, capsys, monkeypatch):
    """The paper's plan shape: every variant once per [[descriptor]]; one whose index is missing is
    built first; one without weights is skipped with the reason (never dropped silently); the
    comparison has the paper's layout and accuracy vs K."""
    monkeypatch.delenv("GEOGUIDE_MEGALOC_WEIGHTS", raising=False)
    root, _ = synthetic_refs
    built = tmp_path / "idx-thumb16"
    plan = tmp_path / "paper.toml"
    plan.write_text(f"""
[base]
images = "{root / "images"}"
labels = "{root / "labels.csv"}"
vlm = "replay:{replay}"
exclude_same_author = true
reuse_index_descriptors = true
limit = 6

[[descriptor]]
name = "thumbnail"
index = "{built}"
options = {{ size = 16 }}
submaps = "country,kmeans:2,kmeans:3"

[[descriptor]]
name = "megaloc"
index = "{tmp_path / "idx-megaloc"}"

[[descriptor]]
name = "dinov2"
index = "{synthetic_index.root}"

[[variant]]
name = "retrieval-only"
vlm = "none"

[[variant]]
name = "kmeans2-rerank"
scheme = "kmeans-2"
prior_level = "country"

[[variant]]
name = "kmeans3-rerank"
scheme = "kmeans-3"
prior_level = "country"

[grid]
corrupt_prior = [0.0, 0.5]
k = [5]
""")
    out = tmp_path / "out"
    assert main(["ablate", str(plan), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "skipping descriptor megaloc: " in err and "GEOGUIDE_MEGALOC_WEIGHTS" in err
    assert "skipping descriptor dinov2: its index" in err and "built with 'thumbnail'" in err  # not mislabelled
    assert (built / "manifest.json").is_file()
    rows = list(csv.DictReader((out / "comparison.csv").read_text().splitlines()))
    assert [r["variant"] for r in rows] == [f"thumbnail__{row}__corrupt_prior={p},k=5" for row in
                                            ("retrieval-only", "kmeans2-rerank", "kmeans3-rerank") for p in ("0", "0.5")]
    md = (out / "comparison.md").read_text()
    assert "| thumbnail | kmeans3-rerank |" in md and "Street 1 km" in md and "| megaloc | skipped: " in md
    for png in ("accuracy_vs_k.png", "accuracy_vs_corruption.png"):  # lines per descriptor and setting
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    plan.write_text(plan.read_text().replace('name = "thumbnail"', 'name = "megaloc-again"'))
    assert main(["ablate", str(plan), "--out", str(tmp_path / "none")]) == 2  # nothing left to run: an error
    assert "nothing to run" in capsys.readouterr().err
    plan.write_text(plan.read_text().replace('name = "megaloc"', 'name = "megaloc"\nsize = 3'))
    assert main(["ablate", str(plan), "--out", str(tmp_path / "none")]) == 2
    assert "[[descriptor]] number 2: size=3: Extra inputs are not permitted" in capsys.readouterr().err
