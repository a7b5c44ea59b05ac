"""The server's doors, checked before any route runs: which names it answers to, which pages may
change its state, and how fast a client may guess its token.

* Host: a page on ``rebind.attacker.example`` whose DNS flips to 127.0.0.1 reaches a local server
  as same-origin (DNS rebinding), and with no token it could read and drive the API. A request
  is answered only when its ``Host`` is an IP literal (a rebinding attack needs the attacker's
  name there), ``localhost``, the name the server is bound to, or a name given with
  ``--allow-host`` (a reverse proxy's public name; ``*`` turns the check off).
* Origin: a cross-site ``multipart/form-data`` POST needs no CORS preflight, so any page the user
  visits could upload photos and spend the model's money. A state-changing request (anything but
  GET, HEAD, OPTIONS) whose ``Origin`` is not this server's own (or one given with
  ``--allow-origin``), or that a browser marks ``Sec-Fetch-Site: cross-site``, is refused; clients
  that are not browsers send neither header and are unaffected.
* Token guessing: failed tokens are limited per client (``auth_per_minute``, default 10), counted
  before the token is compared, so a loop gets 429 instead of an oracle.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Iterable
from urllib.parse import urlsplit

LOCAL_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARD_BINDS = frozenset({"0.0.0.0", "::", ""})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
MAX_CLIENTS = 10_000  # buckets kept per limiter; past it, the full (idle) ones are dropped


def host_name(header: str) -> str:
    """``"LocalHost:8000"`` -> ``"localhost"``; ``"[::1]:8000"`` -> ``"::1"``."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def is_ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class Doors:
    """The Host and Origin rules of one server (see the module docstring)."""

    def __init__(self, bind_host: str = "127.0.0.1", allow_hosts: Iterable[str] = (),
                 allow_origins: Iterable[str] = ()) -> None:
        names = {h.strip().lower() for h in allow_hosts if h.strip()}
        self.any_host = "*" in names
        bound = bind_host.strip().lower().strip("[]")
        self.hosts = frozenset(LOCAL_NAMES | names | ({bound} if bound not in WILDCARD_BINDS else set()))
        self.origins = frozenset(o.strip().rstrip("/").lower() for o in allow_origins if o.strip())

    def host_refusal(self, host_header: str | None) -> str | None:
        """Why a request with this Host is refused, or None."""
        if self.any_host:
            return None
        name = host_name(host_header or "")
        if name in self.hosts or is_ip_literal(name):
            return None
        return (f"unexpected Host {name!r}: this server answers to {', '.join(sorted(self.hosts))} and IP "
                "addresses (geoguide serve --allow-host NAME for a proxy's public name)")

    def origin_refusal(self, method: str, host_header: str | None, origin: str | None,
                       fetch_site: str | None) -> str | None:
        """Why a state-changing request from this origin is refused, or None."""
        if method.upper() in SAFE_METHODS:
            return None
        if origin is not None:
            origin = origin.strip().rstrip("/").lower()
            if origin in self.origins:
                return None
            parts = urlsplit(origin)
            if origin != "null" and parts.scheme in ("http", "https") and parts.netloc == (host_header or "").strip().lower():
                return None
            return (f"cross-origin request from {origin!r} refused (geoguide serve --allow-origin ORIGIN to "
                    "allow a page served elsewhere)")
        if fetch_site is not None and fetch_site.strip().lower() not in ("same-origin", "none"):
            return f"cross-site request refused (Sec-Fetch-Site: {fetch_site})"
        return None


class RateLimiter:
    """A token bucket per client address: ``per_minute`` requests, bursts up to that many. The
    default (60 a minute) is far above a person's pace and below what a loop can send."""

    def __init__(self, per_minute: int) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(per_minute)
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def _level(self, client: str, now: float) -> float:
        tokens, last = self._buckets.get(client, (self.burst, now))
        return min(self.burst, tokens + (now - last) * self.rate)

    def wait(self, client: str) -> float:
        """The seconds until ``client`` may go on, without taking anything (0: now)."""
        with self._lock:
            tokens = self._level(client, time.monotonic())
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate

    def take(self, client: str) -> float:
        """0 when the request may go on (one token taken), else the seconds until it may."""
        now = time.monotonic()
        with self._lock:
            if len(self._buckets) >= MAX_CLIENTS:
                self._buckets = {c: b for c, b in self._buckets.items() if self._level(c, now) < self.burst}
            tokens = self._level(client, now)
            if tokens >= 1.0:
                self._buckets[client] = (tokens - 1.0, now)
                return 0.0
            self._buckets[client] = (tokens, now)
            return (1.0 - tokens) / self.rate
