"""Shared fixtures. Kept generic: each fixture is useful to more than one test module."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # so tests can `import fakes.*` however pytest is run
# The shared split beside the checkout, unless the caller points elsewhere (geoguide itself never
# guesses a data folder from where it is installed).
os.environ.setdefault("GEOGUIDE_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "data" / "im2gps3k"))

from fakes.openai_server import FakeOpenAIServer  # noqa: E402


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAIServer]:
    """A local OpenAI-compatible server: ``.base_url``, ``.script(...)``, ``.requests``."""
    with FakeOpenAIServer() as server:
        yield server


@pytest.fixture(scope="session")
def synthetic_refs(tmp_path_factory):
    """A small geotagged photo set the tests make themselves: (root, samples)."""
    from geoguide.indices.photosets import load_dataset
    from tests.synthetic import make_reference_set

    root = tmp_path_factory.mktemp("synthetic_refs")
    samples = load_dataset("csv", labels=make_reference_set(root), images=root / "images").samples
    return root, samples


@pytest.fixture(scope="session")
def synthetic_index(synthetic_refs):
    """That set indexed with the fast ``thumbnail`` descriptor, country + kmeans:3 submaps."""
    from geoguide.indices.build import BuildConfig, build_index
    from geoguide.indices.store import ReferenceIndex

    root, samples = synthetic_refs
    out = root / "index"
    build_index(samples, out, BuildConfig(descriptor="thumbnail", submaps="country,kmeans:3", chunk_size=5),
                progress=False)
    return ReferenceIndex(out)


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """A real PostgreSQL server for this test session (tests/postgres.py); skipped where the package is missing."""
    from tests.postgres import postgres_bin, postgres_server

    if postgres_bin() is None:
        pytest.skip("PostgreSQL is not installed: apt-get install postgresql (make test installs it as root)")
    pytest.importorskip("langgraph.checkpoint.postgres", reason="geoguide[postgres] is not installed")
    with postgres_server() as url:
        yield url


@pytest.fixture
def postgres_url(postgres_server_url) -> str:
    """A fresh, empty database on that server."""
    from tests.postgres import new_database

    return new_database(postgres_server_url)
