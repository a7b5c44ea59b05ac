"""Write a complete index directory from described references (the last step of a build).

Files a previous index in the same folder listed but this one does not write (another scheme's
submaps, say) are removed before the new manifest appears: an index folder holds one index.
"""

from __future__ import annotations

import datetime as dt
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Literal

import faiss
import numpy as np

from indices import atomic
from indices.descriptors import Descriptor
from indices.geometry import haversine_km, latlon_to_unit, unit_to_latlon
from indices.manifest import MANIFEST_NAME, DescriptorInfo, Manifest, SchemeInfo, SourceInfo, file_entry
from indices.submaps import Submap, SubmapScheme

ADD_CHUNK = 65_536
NO_COUNTRY = "XX"
# Files only a geoguide index has: one of them in a folder makes it (part of) an index.
INDEX_MARKERS = (MANIFEST_NAME, "faiss.index", "descriptors.f16.npy", "descriptor_state.npz")


def index_files(out: Path) -> list[Path]:
    """Every file an index (whole or half-written) may have in ``out``, found by name, not by manifest.

    What ``overwrite`` deletes: the markers, ``refs/*.npy``, ``submaps/*.json`` and ``*.npy``, and
    the temporary files of interrupted atomic writes (``.<name>.*.tmp``) beside them. The build's
    ``work/`` folder is handled by the builder (it is only removed when its key file proves it ours).
    """
    found = [out / name for name in INDEX_MARKERS]
    found += [*out.glob("refs/*.npy"), *out.glob("submaps/*.json"), *out.glob("submaps/*.npy")]
    for folder in (out, out / "refs", out / "submaps"):
        found += folder.glob(".*.tmp")
    return [p for p in found if p.is_file() or p.is_symlink()]


def previous_files(out: Path) -> set[str]:
    """The files the manifest in ``out`` lists (empty when there is none or it is unreadable)."""
    try:
        return set(Manifest.model_validate_json((out / MANIFEST_NAME).read_text()).files)
    except (OSError, ValueError):
        return set()


def _geoguide_version() -> str:
    try:
        return version("geoguide")
    except PackageNotFoundError:
        return "0+unknown"


def _bytes_column(values: list[str]) -> np.ndarray:
    encoded = [v.encode("utf-8") for v in values]
    width = max([len(e) for e in encoded] + [1])
    return np.array(encoded, dtype=f"S{width}")


def _submaps_of(scheme: SubmapScheme, labels: np.ndarray, lat: np.ndarray, lon: np.ndarray, order: np.ndarray):
    """Per-label span in ``order`` plus centroid, size and 90%-radius, all vectorised."""
    sorted_labels = labels[order]
    uniq, starts, counts = np.unique(sorted_labels, return_index=True, return_counts=True)
    xyz = latlon_to_unit(lat[order], lon[order])
    sums = np.add.reduceat(xyz, starts, axis=0)
    clat, clon = unit_to_latlon(sums)
    entries = []
    for i, label in enumerate(uniq):
        a, n = int(starts[i]), int(counts[i])
        d = haversine_km(clat[i], clon[i], lat[order[a : a + n]], lon[order[a : a + n]])
        lab = str(label)
        sub = Submap(
            id=scheme.submap_id(lab),
            scheme=scheme.prefix,
            name=scheme.label_name(lab, float(clat[i]), float(clon[i])),
            lat=round(float(clat[i]), 6),
            lon=round(float(clon[i]), 6),
            size=n,
            radius_km=round(float(np.percentile(d, 90)), 1),
        )
        entries.append({"label": lab, "span": [a, a + n], "submap": sub.model_dump()})
    return entries


def write_index(
    out_dir: str | Path,
    *,
    ids: list[str],
    authors: list[str],
    paths: list[str],
    lat: np.ndarray,
    lon: np.ndarray,
    country: np.ndarray,
    descriptors: np.ndarray,
    descriptor: Descriptor,
    schemes: list[SubmapScheme],
    faiss_index: Literal["flat", "fp16"],
    source: SourceInfo,
    build_key: str | None = None,
) -> Manifest:
    """Sort references by the primary scheme, then write every file and the manifest last."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    old_files = previous_files(out)
    (out / MANIFEST_NAME).unlink(missing_ok=True)  # a half-replaced index must not look whole
    stored = [s for s in schemes if s.stored]
    if not stored:
        raise ValueError("at least one stored submap scheme is needed (country, kmeans:K or global)")
    lat, lon = np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64)
    # References farther offshore than any country's reach get "XX" (international waters).
    country = np.array([c if c else NO_COUNTRY for c in np.asarray(country, dtype=object)], dtype=str)
    labels = {}
    for s in stored:
        s.fit(lat, lon)
        labels[s.prefix] = s.assign(lat, lon, country)
    # Storage order: grouped by the primary scheme's label, stable within a group.
    perm = np.argsort(labels[stored[0].prefix], kind="stable")
    lat, lon, country = lat[perm], lon[perm], country[perm]
    labels = {k: v[perm] for k, v in labels.items()}
    n = len(perm)

    files: list[str] = []

    def save(rel: str, arr: np.ndarray) -> None:
        atomic.save_npy(out / rel, arr)
        files.append(rel)

    save("refs/id.npy", _bytes_column([ids[i] for i in perm]))
    save("refs/author.npy", _bytes_column([authors[i] for i in perm]))
    save("refs/path.npy", _bytes_column([paths[i] for i in perm]))
    save("refs/country.npy", _bytes_column(country.tolist()))
    save("refs/lat.npy", lat)
    save("refs/lon.npy", lon)
    desc16 = np.asarray(descriptors, dtype=np.float16)[perm]
    save("descriptors.f16.npy", desc16)
    atomic.save_npz(out / "descriptor_state.npz", descriptor.state())
    files.append("descriptor_state.npz")

    dim = desc16.shape[1]
    if faiss_index == "flat":
        index = faiss.IndexFlatIP(dim)
    else:
        index = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
    for s in range(0, n, ADD_CHUNK):
        index.add(np.ascontiguousarray(desc16[s : s + ADD_CHUNK], dtype=np.float32))
    with atomic.atomic_path(out / "faiss.index") as tmp:
        faiss.write_index(index, str(tmp))
    files.append("faiss.index")

    infos = []
    for i, s in enumerate(stored):
        contiguous = i == 0
        order = np.arange(n) if contiguous else np.argsort(labels[s.prefix], kind="stable")
        entries = _submaps_of(s, labels[s.prefix], lat, lon, order)
        if not contiguous:
            save(f"submaps/{s.prefix}.order.npy", order.astype(np.int64))
        atomic.write_json(out / "submaps" / f"{s.prefix}.json", {"scheme": s.spec, "state": s.state(), "submaps": entries})
        files.append(f"submaps/{s.prefix}.json")
        infos.append(SchemeInfo(spec=s.spec, prefix=s.prefix, n_submaps=len(entries), contiguous=contiguous))

    for rel in sorted(old_files - set(files)):
        stale = out / rel
        if stale.resolve().is_relative_to(out.resolve()):  # a tampered manifest must not reach outside
            stale.unlink(missing_ok=True)

    manifest = Manifest(
        build_key=build_key,
        geoguide_version=_geoguide_version(),
        created_utc=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        descriptor=DescriptorInfo(name=descriptor.name, conf=descriptor.conf, dim=dim, fingerprint=descriptor.fingerprint()),
        n_references=n,
        faiss_index=faiss_index,
        schemes=infos,
        source=source,
        files={rel: file_entry(out / rel) for rel in files},
    )
    atomic.write_text(out / MANIFEST_NAME, manifest.model_dump_json(indent=2) + "\n")
    return manifest
