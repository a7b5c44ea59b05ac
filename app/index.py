"""``geoguide index …``: build and inspect reference indices."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from geoguide.agent.settings import parse_assignment
from geoguide.app.options import CLIError, echo_json

index_app = typer.Typer(no_args_is_help=True, help="Build and inspect reference indices.")



@index_app.command("build")
def index_build(
    out: Annotated[Path, typer.Option("--out", help="index directory to write (resumes an interrupted build)")],
    images: Annotated[Path | None, typer.Option("--images", help="folder of reference photos")] = None,
    labels: Annotated[Path | None, typer.Option("--labels", help="CSV: IMG_ID,AUTHOR,LAT,LON; omit to read EXIF GPS from --images")] = None,
    descriptor: Annotated[str, typer.Option("--descriptor", help="effnet-gem | densevlad | clip | megaloc | netvlad | thumbnail (geoguide models: which run here)")] = "effnet-gem",
    descriptor_opt: Annotated[list[str] | None, typer.Option("--descriptor-opt", help="KEY=VALUE (JSON value) descriptor option; repeatable")] = None,
    submaps: Annotated[str, typer.Option("--submaps", help="schemes, first = storage order")] = "country,kmeans:100",
    store: Annotated[str, typer.Option("--store", help="fp16 (exact) | sq8 | pq:M | opq:M (compressed, re-scored exactly)")] = "fp16",
    faiss_index: Annotated[str | None, typer.Option("--faiss-index", hidden=True, help="deprecated: use --store fp16")] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="index only the first N rows")] = None,
    col_id: Annotated[str | None, typer.Option("--col-id", help="id column name in --labels")] = None,
    col_lat: Annotated[str | None, typer.Option("--col-lat")] = None,
    col_lon: Annotated[str | None, typer.Option("--col-lon")] = None,
    col_author: Annotated[str | None, typer.Option("--col-author")] = None,
    chunk_size: Annotated[int, typer.Option("--chunk-size", min=1, help="images per resumable chunk")] = 256,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace another index (or a non-index folder's content) in --out")] = False,
    ray: Annotated[bool, typer.Option("--ray", help="describe on a local Ray runtime (one actor per CPU)")] = False,
    ray_address: Annotated[str | None, typer.Option("--ray-address", help="describe on this Ray cluster (HOST:PORT or auto)")] = None,
    ray_workers: Annotated[int | None, typer.Option("--ray-workers", min=1, help="describing actors (default: cluster CPUs)")] = None,
    ray_cpus: Annotated[float, typer.Option("--ray-cpus-per-worker", min=0.01, help="CPUs per actor")] = 1.0,
    dedupe: Annotated[bool, typer.Option("--dedupe", help="drop exact and near-duplicate photos (dHash)")] = False,
    dedupe_bits: Annotated[int, typer.Option("--dedupe-bits", min=0, max=32, help="near-duplicate threshold, bits of 128")] = 5,
    exclude_near: Annotated[Path | None, typer.Option("--exclude-near", help="benchmark labels CSV: drop references near its queries")] = None,
    km: Annotated[float, typer.Option("--km", help="with --exclude-near: the separation in km (OSV-5M: 1)")] = 1.0,
) -> None:
    """Describe reference photos and write a searchable, submap-partitioned index."""
    from geoguide.indices.build import BuildConfig, build_index, validate_build_config
    from geoguide.indices.distributed import RayOptions
    from geoguide.indices.filtering import REMOVED_NAME, read_removed, rule_counts
    from geoguide.indices.manifest import SourceInfo
    from geoguide.indices.photosets import load_dataset

    if images is None and labels is None:
        raise CLIError("give --images DIR (with --labels CSV, or photos carrying EXIF GPS)")
    conf = dict(parse_assignment(kv, "--descriptor-opt") for kv in descriptor_opt or [])
    if faiss_index is not None:
        if faiss_index not in ("fp16", "flat"):
            raise CLIError(f"--faiss-index must be fp16 or flat, got {faiss_index!r} (deprecated: use --store)")
        typer.echo("geoguide: warning: --faiss-index is deprecated and will be removed; both values mean "
                   "--store fp16 (exact; a float32 copy of fp16 descriptors scores the same)", err=True)
    config = BuildConfig(descriptor=descriptor, descriptor_conf=conf, submaps=submaps, store=store,
                         chunk_size=chunk_size, filters=_filter_config(dedupe, dedupe_bits, exclude_near, km))
    ray_options = RayOptions(address=ray_address, workers=ray_workers, cpus_per_worker=ray_cpus) \
        if ray or ray_address else None
    validate_build_config(config)  # fail on a typo before reading thousands of rows
    if labels is not None:
        columns = {k: v for k, v in {"id": col_id, "lat": col_lat, "lon": col_lon, "author": col_author}.items() if v}
        data = load_dataset("csv", labels=labels, images=images, require_images=True, **columns)
    else:
        data = load_dataset("exif", images=images)
    rep = data.report  # the loader has already logged skipped rows with the first reason
    samples = data.samples[:limit] if limit else data.samples
    source = SourceInfo.from_report(rep, labels, images)
    manifest = build_index(samples, out, config, source, progress=True, overwrite=overwrite, ray=ray_options)
    typer.echo(
        f"indexed {manifest.n_references} references ({manifest.source.n_bad_rows} bad rows, "
        f"{manifest.source.n_failed_images} unreadable images skipped) -> {out}"
    )
    if config.filters.active:
        removed = read_removed(out)
        counts = ", ".join(f"{rule} {n}" for rule, n in sorted(rule_counts(removed).items())) or "none"
        typer.echo(f"filters removed {len(removed)} references ({counts}); listed in {out / REMOVED_NAME}")
    for f in manifest.source.failed_images[:5]:
        typer.echo(f"  unreadable: {f.id} ({f.path}): {f.reason}", err=True)
    if manifest.calibration is None:  # a build resumed or repeated keeps the calibration it stored
        _calibrate(out)


@index_app.command("import")
def index_import(
    vectors: Annotated[Path, typer.Argument(metavar="VECTORS", help=".npy (one row per labels row, in order) or .parquet (IMG_ID + a vector column)")],
    labels: Annotated[Path, typer.Option("--labels", help="CSV: IMG_ID,AUTHOR,LAT,LON (any layout index build reads)")],
    out: Annotated[Path, typer.Option("--out", help="index directory to write")],
    descriptor_name: Annotated[str, typer.Option("--descriptor-name", help="what made the vectors, e.g. megaloc (shown by index info)")] = "imported",
    submaps: Annotated[str, typer.Option("--submaps", help="schemes, first = storage order")] = "country,kmeans:100",
    store: Annotated[str, typer.Option("--store", help="fp16 (exact) | sq8 | pq:M | opq:M (compressed, re-scored exactly)")] = "fp16",
    vector_column: Annotated[str | None, typer.Option("--vector-column", help="Parquet: the vector column, when there are several")] = None,
    col_id: Annotated[str | None, typer.Option("--col-id", help="id column name in --labels")] = None,
    col_lat: Annotated[str | None, typer.Option("--col-lat")] = None,
    col_lon: Annotated[str | None, typer.Option("--col-lon")] = None,
    col_author: Annotated[str | None, typer.Option("--col-author")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace another index in --out")] = False,
) -> None:
    """An index from vectors computed elsewhere (e.g. on a GPU cluster): the same submaps, stores,
    calibration and updates as a built one; queries then bring theirs with --query-vectors."""
    import time

    from geoguide.indices.importing import import_index
    from geoguide.indices.manifest import SourceInfo
    from geoguide.indices.photosets import load_dataset

    t = time.perf_counter()
    columns = {k: v for k, v in {"id": col_id, "lat": col_lat, "lon": col_lon, "author": col_author}.items() if v}
    data = load_dataset("csv", labels=labels, **columns)
    rep = data.report
    if not data.samples:
        raise CLIError(f"{labels}: no usable rows ({rep.problems[:1] or 'empty'})")
    source = SourceInfo.from_report(rep, labels)
    manifest = import_index(vectors, data.samples, out, descriptor_name=descriptor_name, submaps=submaps,
                            store=store, source=source, vector_column=vector_column, overwrite=overwrite)
    skipped = manifest.source.n_bad_rows
    typer.echo(f"imported {manifest.n_references} references ({manifest.descriptor.dim} dimensions, {skipped} rows "
               f"skipped) -> {out} ({time.perf_counter() - t:.1f} s)")
    for p in manifest.source.problems[:5]:
        typer.echo(f"  skipped: {p}", err=True)
    _calibrate(out)


def load_query_points(labels: Path, km: float):
    """A benchmark's query locations (any labels layout ``indices.photosets`` reads) for the leakage rule."""
    import logging

    from geoguide.indices.filtering import query_points
    from geoguide.indices.photosets import load_dataset

    data = load_dataset("csv", labels=labels)
    if data.report.n_bad:
        first = data.report.dropped[0] if data.report.dropped else None
        logging.getLogger(__name__).warning("%s: %d query rows without a usable location are ignored (first: %s)",
                                            labels, data.report.n_bad, first.reason if first else "?")
    s = data.samples
    return query_points(labels, km, [x.image_id for x in s], [x.lat for x in s], [x.lon for x in s])


def _filter_config(dedupe: bool, dedupe_bits: int, exclude_near: Path | None, km: float):
    """The filter options as a ``FilterConfig`` (the query file is read here, so a bad one fails first)."""
    from geoguide.indices.filtering import FilterConfig

    points = load_query_points(exclude_near, km) if exclude_near is not None else None
    return FilterConfig(dedupe=dedupe, max_hamming=dedupe_bits, exclude_near=points.spec if points else None,
                        points=points)


@index_app.command("filter")
def index_filter(
    index_dir: Annotated[Path, typer.Argument(metavar="INDEX", help="index directory")],
    dedupe: Annotated[bool, typer.Option("--dedupe", help="remove exact and near-duplicate photos (dHash)")] = False,
    dedupe_bits: Annotated[int, typer.Option("--dedupe-bits", min=0, max=32, help="near-duplicate threshold, bits of 128")] = 5,
    exclude_near: Annotated[Path | None, typer.Option("--exclude-near", help="benchmark labels CSV: remove references near its queries")] = None,
    km: Annotated[float, typer.Option("--km", help="with --exclude-near: the separation in km (OSV-5M: 1)")] = 1.0,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="say what would be removed; change nothing")] = False,
    ids_out: Annotated[Path | None, typer.Option("--out", help="also write the ids to remove, a one-column CSV (for index remove --ids)")] = None,
    workers: Annotated[int, typer.Option("--workers", min=1, help="threads reading photos for --dedupe")] = 2,
) -> None:
    """Remove near-duplicate references and references near a benchmark's queries from a built index."""
    from geoguide.indices.filtering import filter_index, write_removed_ids
    from geoguide.indices.update import apply_filter

    if not dedupe and exclude_near is None:
        raise CLIError("give --dedupe and/or --exclude-near CSV [--km R]")
    plan = filter_index(index_dir, _filter_config(dedupe, dedupe_bits, exclude_near, km), workers=workers)
    for line in plan.summary_lines():
        typer.echo(line)
    if ids_out is not None:
        write_removed_ids(ids_out, plan.removals)
        typer.echo(f"wrote {len(plan.removals)} ids to {ids_out}")
    if dry_run:
        return
    apply_filter(plan)  # with nothing to remove, it still tidies what an interrupted update left
    if not plan.removals:
        return
    typer.echo(f"removed {len(plan.removals)} references from {index_dir}; listed in {index_dir / 'removed.csv'}")


@index_app.command("info")
def index_info(
    index_dir: Annotated[Path, typer.Argument(metavar="INDEX", help="index directory")],
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    top: Annotated[int, typer.Option("--top", help="largest submaps shown per scheme")] = 5,
) -> None:
    """Counts per scheme, largest submaps, descriptor and size on disk."""
    from geoguide.indices.store import ReferenceIndex

    index = ReferenceIndex(index_dir)
    m = index.manifest
    size = sum(p.stat().st_size for p in Path(index_dir).rglob("*") if p.is_file())
    info = {
        "path": str(index_dir),
        "n_references": m.n_references,
        "descriptor": m.descriptor.model_dump(),
        "faiss_index": m.faiss_index,
        "store": m.store.model_dump() if m.store else {"spec": "fp16"},
        "generation": m.generation,
        "segments": [{"data_dir": g.data_dir, "n_rows": g.n_rows, "generation": g.generation} for g in m.segments],
        "n_tombstones": m.tombstones.n if m.tombstones else 0,
        "frozen": m.frozen,
        "removals": [r.model_dump() for r in m.removals],
        "size_bytes": size,
        "source": m.source.model_dump(),
        "schemes": {
            s.prefix: {
                "spec": s.spec,
                "n_submaps": s.n_submaps,
                "storage_order": s.contiguous,
                "largest": [sm.model_dump() for sm in index.list_submaps(s.prefix)[:top]],
            }
            for s in m.schemes
        },
        "created_utc": m.created_utc,
        "geoguide_version": m.geoguide_version,
    }
    from geoguide.indices.calibration import load_calibration

    cal = load_calibration(index)
    info["calibration"] = cal.model_dump() if cal else None
    if as_json:
        echo_json(info)
        return
    typer.echo(f"{index_dir}: {m.n_references} references, {size / 1e6:.1f} MB on disk")
    typer.echo(f"descriptor: {m.descriptor.name} ({m.descriptor.dim}-d) conf={m.descriptor.conf}")
    params = m.store.params if m.store else {}
    typer.echo(f"store: {m.faiss_index} {params.get('factory', 'IVF1,SQfp16')} (code {params.get('code_size', 2 * m.descriptor.dim)} "
               f"bytes{', re-scored x' + str(params['rerank']) if not params.get('exact', True) else ''})"
               f"; generation {m.generation}, {sum(r.n for r in m.removals)} removed")
    if m.segments or m.tombstones:
        added = sum(g.n_rows for g in m.segments)
        typer.echo(f"updates since the last compaction: {len(m.segments)} added segments ({added} rows), "
                   f"{m.tombstones.n if m.tombstones else 0} removed rows kept as tombstones "
                   "(geoguide index compact merges them)")
    if m.frozen:
        typer.echo(f"frozen since the build: {', '.join(m.frozen)}")
    typer.echo(f"source: {m.source.labels or m.source.images} — {m.source.n_bad_rows} bad rows, "
               f"{m.source.n_failed_images} unreadable images skipped")
    for f in m.source.failed_images[:top]:
        typer.echo(f"  unreadable: {f.id} ({f.path}): {f.reason}")
    if m.source.n_failed_images > top:
        typer.echo(f"  … {m.source.n_failed_images - top} more unreadable (index info --json lists up to "
                   f"{len(m.source.failed_images)})")
    for line in cal.table() if cal else ["calibration: none yet (geoguide index calibrate stores it; a search "
                                         "calibrates in memory on first use)"]:
        typer.echo(line)
    for s in info["schemes"].values():
        typer.echo(f"scheme {s['spec']}: {s['n_submaps']} submaps{' (storage order)' if s['storage_order'] else ''}")
        for sm in s["largest"]:
            typer.echo(f"  {sm['id']:<22} {sm['size']:>7}  {sm['name']}")


@index_app.command("add")
def index_add(
    index_dir: Annotated[Path, typer.Argument(metavar="INDEX", help="index directory")],
    images: Annotated[Path, typer.Option("--images", help="folder of the new reference photos")],
    labels: Annotated[Path | None, typer.Option("--labels", help="CSV: IMG_ID,AUTHOR,LAT,LON; omit to read EXIF GPS")] = None,
    chunk_size: Annotated[int, typer.Option("--chunk-size", min=1, help="images per resumable chunk")] = 256,
) -> None:
    """Add photos to an index as one new segment, without rebuilding it (atomic; resumable).

    Only the new rows are written; learned parts stay frozen. Run it again after an interruption.
    """
    from geoguide.indices.manifest import SourceInfo
    from geoguide.indices.photosets import load_dataset
    from geoguide.indices.update import add_references

    if labels is not None:
        data = load_dataset("csv", labels=labels, images=images, require_images=True)
    else:
        data = load_dataset("exif", images=images)
    if not data.samples:
        why = data.report.problems[0] if data.report.problems else "the folder holds no photos"
        how = "" if labels is not None else " (without --labels, each photo needs GPS in its EXIF)"
        raise CLIError(f"nothing to add from {images}: {data.report.n_bad} of {data.report.n_read} photos or rows "
                       f"unusable, first: {why}{how}")
    source = SourceInfo(labels=str(labels) if labels else None, images=str(images.resolve()),
                        problems=data.report.problems)
    rep = add_references(index_dir, data.samples, source=source, chunk_size=chunk_size, progress=True)
    typer.echo(f"added {rep.n_added} references ({rep.n_skipped} already in the index, {rep.n_failed_images} "
               f"unreadable images skipped) -> {index_dir}: {rep.n_references} references, generation {rep.generation}"
               f"{_pending(rep)}")
    if rep.n_added:
        _calibrate_after_change(index_dir)


def _pending(rep) -> str:
    if not (rep.n_segments or rep.n_tombstones):
        return ""
    return f" ({rep.n_segments} segments, {rep.n_tombstones} tombstones: geoguide index compact merges them)"


@index_app.command("remove")
def index_remove(
    index_dir: Annotated[Path, typer.Argument(metavar="INDEX", help="index directory")],
    ids: Annotated[Path | None, typer.Option("--ids", help="file of reference ids: index filter --out's CSV, a CSV's first column, or one per line")] = None,
    author: Annotated[str | None, typer.Option("--author", help="remove every reference of this photographer")] = None,
    reason: Annotated[str, typer.Option("--reason", help="recorded in removals.csv and the manifest")] = "removed by hand",
) -> None:
    """Remove references by id or by author (atomic; recorded in the removals history).

    Removed rows become tombstones: nothing else is rewritten until index compact.
    """
    from geoguide.indices.update import ids_of_author, remove_references

    if (ids is None) == (author is None):
        raise CLIError("give exactly one of --ids FILE or --author ID")
    if ids is not None:
        try:
            with open(ids, encoding="utf-8", newline="") as f:  # newline="": a quoted id keeps its \r\n
                text = f.read()
        except OSError as e:
            raise CLIError(f"--ids: cannot read {ids}: {e.strerror}") from None
        from geoguide.indices.filtering import read_id_list

        wanted = read_id_list(text)
    else:
        wanted = ids_of_author(index_dir, author)
        if not wanted:
            raise CLIError(f"no reference of author {author!r} in {index_dir}")
    rep = remove_references(index_dir, wanted, reason=reason)
    typer.echo(f"removed {rep.n_removed} references ({rep.n_skipped} ids not in the index) -> {index_dir}: "
               f"{rep.n_references} references, generation {rep.generation}{_pending(rep)}")


@index_app.command("compact")
def index_compact(index_dir: Annotated[Path, typer.Argument(metavar="INDEX", help="index directory")]) -> None:
    """Merge added segments and removed rows into one new base (the full rewrite; resumable).

    Readers that opened the index keep working; run it again after an interruption to complete it.
    """
    import time

    from geoguide.indices.update import compact_index

    t = time.perf_counter()
    rep = compact_index(index_dir)
    if not (rep.n_segments or rep.n_tombstones):
        typer.echo(f"{index_dir}: nothing to compact ({rep.n_references} references, generation {rep.generation})")
        return
    typer.echo(f"compacted {rep.n_segments} segments and {rep.n_tombstones} removed rows -> {index_dir}: "
               f"{rep.n_references} references, generation {rep.generation} ({time.perf_counter() - t:.1f} s)")
    _calibrate_after_change(index_dir)


REFIT_CHANGE = 0.10


def _calibrate_after_change(index_dir: Path) -> None:
    """Refit the calibration only when the map changed by more than ``REFIT_CHANGE`` since it was
    fitted: an update is O(change) (1,000 references: 0.1 s at 5M), a fit is not (two searches per
    sampled reference: ~5 min for 5,000 at 1M x 256 fp16, 57 ms a whole-map search; ~27 min at 5M),
    and a map that grew by a few percent means what it meant."""
    from geoguide.indices.calibration import load_calibration
    from geoguide.indices.store import ReferenceIndex

    index = ReferenceIndex(index_dir)
    cal, n = load_calibration(index), len(index)
    if cal is not None and abs(n - cal.n_references) <= REFIT_CHANGE * cal.n_references:
        typer.echo(f"calibration kept: fitted on {cal.n_references} references, the map has {n} (within "
                   f"{REFIT_CHANGE:.0%}); geoguide index calibrate refits it")
        return
    _calibrate(index_dir)


def _calibrate(index_dir: Path, sample: int | None = None) -> None:
    """Refit and store the map's calibration after a change (``indices.calibration``)."""
    from geoguide.indices.calibration import calibrate_index

    try:
        cal = calibrate_index(index_dir, **({"sample": sample} if sample is not None else {}))
    except ValueError as e:  # a map too small to calibrate is still a map
        typer.echo(f"calibration skipped: {e}", err=True)
        return
    ece = "; ".join(f"{s.scope}: " + ", ".join(f"{m.km:g} km {m.ece:.3f}" for m in s.models) for s in cal.scopes)
    typer.echo(f"calibrated on {cal.n_sample} references in {cal.seconds:.1f} s (held-out ECE: {ece})")


@index_app.command("calibrate")
def index_calibrate(
    index_dir: Annotated[Path, typer.Argument(metavar="INDEX", help="index directory")],
    sample: Annotated[int, typer.Option("--sample", min=20, max=20_000, help="references searched, leave-one-photographer-out")] = 5_000,
) -> None:
    """Refit what a match means on this map: P(best match within 1/25/200/750/2500 km) from its
    similarity, margin and agreement, by leave-one-photographer-out self-retrieval (no labels)."""
    _calibrate(index_dir, sample)


@index_app.command("verify")
def index_verify(index_dir: Annotated[Path, typer.Argument(metavar="INDEX", help="index directory")]) -> None:
    """Check every file the manifest lists against its SHA-256 (opening checks sizes only).

    Files it does not list (what an interrupted update left; the next update deletes them) are not checked.
    """
    import time

    from geoguide.indices.store import ReferenceIndex

    t = time.perf_counter()
    index = ReferenceIndex(index_dir, verify=True)
    m = index.manifest
    size = sum(f.bytes for f in m.files.values())
    typer.echo(f"{index_dir}: {len(m.files)} files, {size / 1e6:.1f} MB, checksums match "
               f"({m.n_references} references, generation {m.generation}, {len(m.segments)} segments, "
               f"{m.tombstones.n if m.tombstones else 0} tombstones, {time.perf_counter() - t:.1f} s; "
               "only the files the manifest lists are checked)")
