"""The prior's country: the one place a VLM's answer becomes an ISO2 code.

The graph derives it once per photo (``AgentState.prior_country``), the rules policy searches the
submaps of every named country, and prior corruption starts from the same country, so all three
read it from here: the first named country that resolves (an ISO2 code as given, else its name
through ``lookup_country``), else the country under the prior's point. Typed by protocols so that
``indices`` does not import the agent's schemas (``agent.schemas.Perception`` fits).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from geoguide.geo.names import lookup_country
from geoguide.geo.points import country_at


class NamedCountry(Protocol):
    @property
    def iso2(self) -> str | None: ...

    @property
    def name(self) -> str | None: ...


class Prior(Protocol):
    @property
    def countries(self) -> Sequence[NamedCountry]: ...

    @property
    def lat(self) -> float | None: ...

    @property
    def lon(self) -> float | None: ...


def named_countries(prior: Prior) -> list[str]:
    """ISO2 of each named country that resolves, in the prior's order (unresolved names skipped)."""
    out = []
    for guess in prior.countries:
        iso = guess.iso2 or (lookup_country(guess.name) if guess.name else None)
        if iso:
            out.append(iso)
    return out


def prior_country(prior: Prior | None) -> str | None:
    """The first named country that resolves, else the country under the point; None without either."""
    if prior is None:
        return None
    named = named_countries(prior)
    if named:
        return named[0]
    return country_at(prior.lat, prior.lon) if prior.lat is not None and prior.lon is not None else None
