"""Shared fixtures. Kept generic: each fixture is useful to more than one test module."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # so tests can `import fakes.*` however pytest is run

from fakes.openai_server import FakeOpenAIServer  # noqa: E402


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAIServer]:
    """A local OpenAI-compatible server: ``.base_url``, ``.script(...)``, ``.requests``."""
    with FakeOpenAIServer() as server:
        yield server
