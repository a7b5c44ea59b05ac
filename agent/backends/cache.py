"""SQLite cache of model replies, so re-running a benchmark or a chat makes no new calls.

The key is a SHA-256 over the backend identity (kind, model, base URL), the messages with every
image replaced by the SHA-256 of its encoded bytes, the tool definitions and the sampling
parameters. Only replies are stored (content, tool calls, token counts, cost) plus readable
columns for inspection; never request headers, so an API key cannot end up here. One file can
be shared by threads and processes (WAL journal, one connection guarded by a lock).
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geoguide.core.sqlite import open_shared, unless_disk_full

_SCHEMA = """
CREATE TABLE IF NOT EXISTS replies (
    key TEXT PRIMARY KEY,
    backend TEXT NOT NULL,
    model TEXT NOT NULL,
    prompt_sha256 TEXT NOT NULL,
    image_sha256 TEXT NOT NULL,
    params TEXT NOT NULL,
    reply TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS servers (
    server TEXT PRIMARY KEY,
    facts TEXT NOT NULL,
    updated REAL NOT NULL
)
"""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _redact_images(value: Any, image_hashes: list[str]) -> Any:
    """Copy of ``value`` with each base64 data URL replaced by ``sha256:<hex>`` of its bytes."""
    if isinstance(value, dict):
        return {k: _redact_images(v, image_hashes) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact_images(v, image_hashes) for v in value]
    if isinstance(value, str) and value.startswith("data:") and ";base64," in value:
        digest = _sha256(base64.b64decode(value.split(";base64,", 1)[1]))
        image_hashes.append(digest)
        return f"sha256:{digest}"
    return value


def _texts(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [t for k, v in value.items() if k != "image_url" for t in _texts(v)]
    if isinstance(value, list):
        return [t for v in value for t in _texts(v)]
    return [value] if isinstance(value, str) else []


@dataclass(frozen=True)
class CacheKey:
    key: str
    backend: str
    model: str
    prompt_sha256: str  # over the text of all messages (and tools)
    image_sha256: str  # comma-joined, one per image in the conversation
    params: str  # canonical JSON of the sampling parameters


def make_key(identity: dict[str, Any], messages: list[dict[str, Any]], tools: list[dict] | None, params: dict[str, Any]) -> CacheKey:
    image_hashes: list[str] = []
    material = {
        "identity": identity,
        "messages": _redact_images(messages, image_hashes),
        "tools": tools or [],
        "params": params,
    }
    canonical = json.dumps(material, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    text = json.dumps([_texts(messages), tools or []], sort_keys=True, ensure_ascii=False)
    return CacheKey(
        key=_sha256(canonical.encode("utf-8")),
        backend=str(identity.get("backend", "")),
        model=str(identity.get("model", "")),
        prompt_sha256=_sha256(text.encode("utf-8")),
        image_sha256=",".join(image_hashes),
        params=json.dumps(params, sort_keys=True),
    )


class ResponseCache:
    """``get``/``put`` of reply records (plain JSON-able dicts) under a ``CacheKey``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db = open_shared(self.path, _SCHEMA)

    def get(self, key: CacheKey) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT reply FROM replies WHERE key = ?", (key.key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: CacheKey, reply: dict[str, Any]) -> None:
        """Store a reply; on a full disk the run goes on uncached (said once)."""
        with self._lock, unless_disk_full(self.path, "response cache"):
            self._db.execute(
                "INSERT OR REPLACE INTO replies VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    key.key,
                    key.backend,
                    key.model,
                    key.prompt_sha256,
                    key.image_sha256,
                    key.params,
                    json.dumps(reply, ensure_ascii=False),
                    time.time(),
                ),
            )

    def server_facts(self, server: str) -> dict[str, Any]:
        """What was learned about ``server`` (a base URL and model) on earlier runs, e.g.
        ``{"vision": false, "tool_mode": "json"}``; {} when nothing was."""
        with self._lock:
            row = self._db.execute("SELECT facts FROM servers WHERE server = ?", (server,)).fetchone()
        try:
            facts = json.loads(row[0]) if row else {}
        except ValueError:
            return {}
        return facts if isinstance(facts, dict) else {}

    def remember_server(self, server: str, facts: dict[str, Any]) -> None:
        """Merge ``facts`` into what is remembered about ``server`` (one transaction: two runs
        learning different things at once both keep theirs)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT facts FROM servers WHERE server = ?", (server,)).fetchone()
                try:
                    known = json.loads(row[0]) if row else {}
                except ValueError:
                    known = {}
                merged = dict(known) if isinstance(known, dict) else {}
                for name, value in facts.items():  # nested facts (formats per purpose) merge too
                    old = merged.get(name)
                    merged[name] = {**old, **value} if isinstance(old, dict) and isinstance(value, dict) else value
                self._db.execute("INSERT OR REPLACE INTO servers VALUES (?, ?, ?)",
                                 (server, json.dumps(merged, sort_keys=True), time.time()))
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # SQLite may have rolled back itself (a full disk)
                    self._db.execute("ROLLBACK")
                raise

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM replies").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> ResponseCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_cache(cache: ResponseCache | str | Path | None) -> ResponseCache | None:
    """Backends accept a path or an open cache; ``None`` means no caching."""
    if cache is None or isinstance(cache, ResponseCache):
        return cache
    opened = None
    with unless_disk_full(cache, "response cache"):  # a full disk: the run goes on uncached, said once
        opened = ResponseCache(cache)
    return opened
