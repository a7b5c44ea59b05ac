"""One source for the accuracy figures: the README quotes eval/RESULTS.md (which `geoguide ablate`
generates), so a re-run that changes a row and forgets the README fails here."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
QUOTED = {  # README row label -> RESULTS.md run name
    "recorded VLM answer alone": "1-prior-only",
    "retrieval only": "2-retrieval-only-effnet-gem",
    "country prior + country submap + re-ranking (the paper)": "3a-country-prior-country-submap-rerank",
    "`rules` agent (default; photos without a prior read and voted)": "5-rules-agent-default",
    "oracle (nearest other-photographer reference)": "6-oracle",
}


def _results() -> dict[str, list[str]]:
    rows = {}
    for line in (ROOT / "eval" / "RESULTS.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 11 and re.match(r"^\d[a-z]?-", cells[0]) and cells[1] == "1630":
            rows.setdefault(cells[0], [c.split(" [")[0] for c in cells[3:8]])
    return rows


def _readme() -> dict[str, list[str]]:
    rows = {}
    for line in (ROOT / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[0] in QUOTED:
            rows[cells[0]] = cells[1:]
    return rows


def test_the_readme_quotes_the_results_table():
    results, readme = _results(), _readme()
    assert set(readme) == set(QUOTED), f"README rows missing: {set(QUOTED) - set(readme)}"
    for label, run in QUOTED.items():
        assert readme[label] == results[run], f"README '{label}' {readme[label]} != RESULTS.md {run} {results[run]}"
