"""Retrieval tools the agent calls: list submaps, search one, widen one.

Each takes the opened ``ReferenceIndex`` and a pydantic argument model and returns a pydantic
result, or a ``ToolError`` the model can act on (unknown submap id, impossible argument).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, Field, ValidationInfo, field_validator

from geoguide.core.images import load_image
from geoguide.geo.geometry import haversine_km, spherical_centroid, validate_latlon
from geoguide.indices.store import ReferenceIndex, SubmapError
from geoguide.indices.submaps import Submap
from geoguide.tools.base import ToolError

# ----------------------------------------------------------------------------------------------
# list_submaps


class ListSubmapsArgs(BaseModel):
    scheme: str = Field("country", description="'country', 'kmeans' or a stored prefix such as 'kmeans-100'")
    near: tuple[float, float] | None = Field(None, description="(lat, lon): order submaps by distance to it")
    country: str | None = Field(None, description="ISO2 code or name: only submaps containing that country")
    limit: int = Field(10, ge=1, le=500)

    @field_validator("near")
    @classmethod
    def _valid_point(cls, v):
        if v is not None:
            validate_latlon(*v)
        return v


class ListSubmapsResult(BaseModel):
    ok: Literal[True] = True
    scheme: str
    total: int = Field(description="submaps in the scheme (before filtering and the limit)")
    submaps: list[Submap]


def list_submaps(index: ReferenceIndex, args: ListSubmapsArgs) -> ListSubmapsResult | ToolError:
    try:
        table = index.stored_table(args.scheme)
    except SubmapError as e:
        return ToolError(error=str(e))
    subs = list(table.submaps.values())
    total = len(subs)
    if args.country:
        from geoguide.geo import lookup_country

        iso = lookup_country(args.country)
        if iso is None:
            return ToolError(error=f"unknown country {args.country!r}; give an ISO2 code such as 'FR' or a name")
        labels = table.scheme.labels_in_country(index, iso)
        subs = [s for lab, s in table.submaps.items() if lab in labels]
    if args.near is not None:
        lat, lon = args.near
        subs.sort(key=lambda s: float(haversine_km(lat, lon, s.lat, s.lon)))
    else:
        subs.sort(key=lambda s: -s.size)
    return ListSubmapsResult(scheme=table.scheme.prefix, total=total, submaps=subs[: args.limit])


# ----------------------------------------------------------------------------------------------
# search_submap


class SearchArgs(BaseModel):
    submap_id: str = Field("global", description="a submap id from list_submaps/widen, e.g. 'country:FR'")
    k: int = Field(20, ge=1, le=1000, description="number of candidates")
    exclude_authors: list[str] = Field(default_factory=list, description="skip references by these photographers")
    exclude_ids: list[str] = Field(default_factory=list, description="skip these reference ids")
    prior_lat: float | None = Field(None, description="the prior's point, to count agreeing candidates")
    prior_lon: float | None = None
    prior_country: str | None = Field(None, description="the prior's country (ISO2)")
    agree_km: float = Field(200.0, gt=0, description="a candidate within this distance of the prior agrees")

    @field_validator("prior_lat", "prior_lon")
    @classmethod
    def _in_range(cls, v: float | None, info: ValidationInfo) -> float | None:
        bound = 90 if info.field_name == "prior_lat" else 180
        if v is not None and not -bound <= v <= bound:
            raise ValueError(f"{info.field_name} {v} is out of range [-{bound}, {bound}]")
        return v


class Candidate(BaseModel):
    ref_id: str
    lat: float
    lon: float
    country: str
    author: str
    similarity: float
    distance_to_prior_km: float | None = None


class SearchSummary(BaseModel):
    submap: Submap
    n_candidates: int
    best_similarity: float | None
    top5_mean_similarity: float | None
    countries: dict[str, int] = Field(description="country histogram of the candidates, largest first")
    top_countries: list[str] = Field(default_factory=list, description="countries of the 5 best matches, in order")
    spread_km: float | None = Field(description="median distance of candidates from their centroid")
    agree_with_prior: int | None = Field(None, description="candidates inside the prior country or radius")
    agree_fraction: float | None = None
    p_within_km: dict[str, float] | None = Field(
        None, description="calibrated P(the best match lies within 1/25/200/750/2500 km of the photo's place), from "
        "the map's own calibration; comparable across descriptors, unlike similarities")


class SearchResult(BaseModel):
    ok: Literal[True] = True
    candidates: list[Candidate]
    summary: SearchSummary


QueryInput = np.ndarray | Image.Image | str | Path


def describe_query(index: ReferenceIndex, query: QueryInput) -> np.ndarray:
    """An image (or its path) -> its descriptor under the index's descriptor; vectors pass through."""
    if isinstance(query, np.ndarray):
        vec = np.asarray(query, dtype=np.float32).reshape(-1)
        if vec.shape[0] != index.manifest.descriptor.dim:
            raise ValueError(f"query vector has {vec.shape[0]} dims, index has {index.manifest.descriptor.dim}")
        return vec
    image = query if isinstance(query, Image.Image) else load_image(query)
    return index.descriptor().extract([image])[0]


def search_submap(index: ReferenceIndex, query: QueryInput, args: SearchArgs) -> SearchResult | ToolError:
    try:
        sel = index.resolve(args.submap_id)
        submap = index.describe_submap(args.submap_id, sel)
    except SubmapError as e:
        return ToolError(error=str(e))
    vec = describe_query(index, query)
    rows, scores = index.search(vec, sel, args.k, frozenset(args.exclude_authors), frozenset(args.exclude_ids))
    cands = []
    for r, s in zip(rows, scores, strict=True):
        row = index.row(int(r))
        d = None
        if args.prior_lat is not None and args.prior_lon is not None:
            d = round(float(haversine_km(args.prior_lat, args.prior_lon, row["lat"], row["lon"])), 2)
        cands.append(
            Candidate(
                ref_id=row["ref_id"], lat=row["lat"], lon=row["lon"], country=row["country"],
                author=row["author"], similarity=round(float(s), 5), distance_to_prior_km=d,
            )
        )
    summary = summarize(cands, submap, args)
    if cands:
        from geoguide.indices.calibration import calibration_or_none, evidence_of

        cal = calibration_or_none(index)
        if cal is not None:
            ev = evidence_of([c.similarity for c in cands], [c.lat for c in cands], [c.lon for c in cands], cal.k)
            summary.p_within_km = cal.probabilities(ev, scope_of(args.submap_id))
    return SearchResult(candidates=cands, summary=summary)


def scope_of(submap_id: str) -> str:
    """Which of the calibration's models reads a search of this submap (``indices.calibration.SCOPES``)."""
    from geoguide.indices.submaps import WHOLE_MAP

    return "map" if submap_id == WHOLE_MAP else "area"


def summarize(cands: list[Candidate], submap: Submap, args: SearchArgs) -> SearchSummary:
    if not cands:
        return SearchSummary(submap=submap, n_candidates=0, best_similarity=None, top5_mean_similarity=None,
                             countries={}, spread_km=None)
    lat = np.array([c.lat for c in cands])
    lon = np.array([c.lon for c in cands])
    clat, clon = spherical_centroid(lat, lon)
    agree = None
    if args.prior_country or args.prior_lat is not None:
        agree = sum(
            1
            for c in cands
            if (args.prior_country and c.country == args.prior_country.upper())
            or (c.distance_to_prior_km is not None and c.distance_to_prior_km < args.agree_km)
        )
    sims = [c.similarity for c in cands]
    return SearchSummary(
        submap=submap,
        n_candidates=len(cands),
        best_similarity=sims[0],
        top5_mean_similarity=round(float(np.mean(sims[:5])), 5),
        countries=dict(Counter(c.country for c in cands).most_common()),
        top_countries=[c.country for c in cands[:5]],
        spread_km=round(float(np.median(haversine_km(clat, clon, lat, lon))), 1),
        agree_with_prior=agree,
        agree_fraction=None if agree is None else round(agree / len(cands), 3),
    )


# ----------------------------------------------------------------------------------------------
# widen


class WidenArgs(BaseModel):
    submap_id: str
    near_lat: float | None = Field(None, ge=-90, le=90, description="the prior's point, if any: a country's "
                                   "neighbours are those of the part of the country that holds it")
    near_lon: float | None = Field(None, ge=-180, le=180)


class WidenResult(BaseModel):
    ok: Literal[True] = True
    from_id: str
    submap_id: str = Field(description="the wider search area; pass it to search_submap")
    submap: Submap
    how: str


def widen(index: ReferenceIndex, args: WidenArgs) -> WidenResult | ToolError:
    """Next larger area, as the scheme the id names widens it (``SubmapScheme.widen``): country ->
    + land neighbours -> continent -> globe; K-means clusters -> + the nearest clusters; a radius ->
    4x the radius; continent -> globe; a scheme of yours -> what it says."""
    sid = args.submap_id.strip()
    try:
        near = (args.near_lat, args.near_lon) if args.near_lat is not None and args.near_lon is not None else None
        new_id, how = index.widen_id(sid, near)  # the scheme the id names knows what is wider
        return WidenResult(from_id=sid, submap_id=new_id, submap=index.describe_submap(new_id), how=how)
    except SubmapError as e:
        return ToolError(error=str(e))
