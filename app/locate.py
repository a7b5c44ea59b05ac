"""``geoguide search``, ``locate`` and ``models``: one photo from the command line, and what can run here."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from geoguide.app.options import AgentOptions, CLIError, agent_options, echo_json

commands = typer.Typer()


@commands.command("search")
def search(
    image: Annotated[Path, typer.Argument(metavar="IMAGE", help="query photo")],
    index_dir: Annotated[Path, typer.Option("--index", help="index directory")],
    k: Annotated[int, typer.Option("-k", help="number of candidates")] = 10,
    submap: Annotated[str, typer.Option("--submap", help="submap id, e.g. country:FR, kmeans-100:37, radius:45.7,4.8,50")] = "global",
    exclude_author: Annotated[list[str] | None, typer.Option("--exclude-author", help="skip references by this photographer; repeatable")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Visual place recognition: the most similar references inside one submap."""
    from geoguide.core.images import load_image
    from geoguide.indices.store import ReferenceIndex
    from geoguide.tools.base import ToolError
    from geoguide.tools.retrieval import SearchArgs, search_submap

    img = load_image(image)
    index = ReferenceIndex(index_dir)
    res = search_submap(index, img, SearchArgs(submap_id=submap, k=k, exclude_authors=exclude_author or []))
    if isinstance(res, ToolError):
        raise CLIError(res.error)
    if as_json:
        echo_json(res.model_dump())
        return
    s = res.summary
    best = "none" if s.best_similarity is None else f"{s.best_similarity:.3f}"
    typer.echo(f"{s.submap.name} ({s.submap.size} refs): best similarity {best}, spread {s.spread_km} km")
    for i, c in enumerate(res.candidates, 1):
        typer.echo(f"{i:>3}. {c.similarity:.3f}  {c.lat:9.4f} {c.lon:10.4f}  {c.country:<3} {c.ref_id}")


def print_event(ev) -> None:
    tool = f"[{ev.tool}] " if ev.tool else ""
    typer.echo(f"  · {ev.node:<9} {tool}{ev.text}", err=True)


def format_prediction(pred) -> str:
    if pred.lat is None:
        return f"No answer ({'; '.join(pred.notes) or pred.prior_error or 'nothing found'})"
    place = ", ".join(x for x in (pred.nearest_city, pred.country_name) if x) or "open sea"
    lines = [f"Answer: {pred.lat:.5f}, {pred.lon:.5f} — {place} (confidence {pred.confidence:.2f}, from {pred.source})",
             f"Why: {pred.why}"]
    if pred.p_within_km:
        odds = " / ".join(f"{v:.2f}" for v in pred.p_within_km.values())
        radius = (f"{pred.radius_coverage:.0%} radius {pred.radius_km:g} km" if pred.radius_km is not None
                  else "radius uncalibrated (pass --calibration PROFILE, made by geoguide calibrate)")
        lines.append(f"Sure: P(within {' / '.join(pred.p_within_km)} km) {odds} ({pred.probability_source}); {radius}")
    if pred.prior is not None:
        p = pred.prior
        pt = f"({p.lat:.4f}, {p.lon:.4f})" if p.has_point else ""
        top = ", ".join(f"{c.label} {c.probability:.2f}" for c in p.countries[:3])
        lines.append(f"Prior: {top} {pt} {p.rationale[:100]}".rstrip())
    elif pred.prior_error:
        lines.append(f"Prior: none ({pred.prior_error})")
    for i, s in enumerate(pred.trail, 1):
        best = "none" if s.summary.best_similarity is None else f"{s.summary.best_similarity:.3f}"
        lines.append(f"Search {i}: {s.summary.submap.name} — best similarity {best}; {s.reason}")
    for c in pred.top_candidates[:3]:
        lines.append(f"  match {c.ref_id} ({c.country}) similarity {c.similarity:.3f}, score {c.score:.3f}")
    for n in pred.notes:
        lines.append(f"Note: {n}")
    return "\n".join(lines)


def check_service(pred) -> None:
    """A prediction made while the model was failing is not what was asked for, unless the user
    accepted a retrieval fallback: the answer is printed, then this makes the exit non-zero."""
    from geoguide.agent.backends.errors import ModelServiceError

    failure = pred.model_failure()
    if failure:
        raise ModelServiceError(f"{failure}; the answer above rests on retrieval alone "
                                "(pass --fallback retrieval to accept that)")


def _one_photo_exists(photos: list[str]) -> list[str]:
    """A single photo that is not there is reported before any model or registry is imported
    (click checks arguments in command-line order, so this runs before --policy's check);
    a batch records a missing photo and goes on."""
    import glob

    if len(photos) == 1 and not glob.has_magic(photos[0]) and not Path(photos[0]).exists():
        raise typer.BadParameter(f"{photos[0]}: no such file")
    return photos


@commands.command("locate")
@agent_options
def locate_cmd(
    photos: Annotated[list[str], typer.Argument(metavar="PHOTO|DIR|GLOB...", callback=_one_photo_exists, help=(
        "a photo; several, a folder (searched recursively) or a quoted glob make a batch"))],
    as_json: Annotated[bool, typer.Option("--json", help="print the whole prediction (a batch: one JSON row "
                                                         "per photo) as JSON")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="do not stream the steps or the progress bar")] = False,
    out: Annotated[Path | None, typer.Option("--out", help=(
        "write one row per photo to .csv, .jsonl, .geojson or .kml; a re-run skips the photos already located"))] = None,
    workers: Annotated[int, typer.Option("--workers", min=1, help="photos located at once (worth it for remote "
                                                                   "models)")] = 1,
    *,
    opts: AgentOptions,
) -> None:
    """Where was this photo taken? Streams the agent's steps, then the answer and its evidence.
    Several photos, a folder or a glob: a batch, with a row per photo and a summary at the end."""
    import glob

    if out is None and len(photos) == 1 and not glob.has_magic(photos[0]) and not Path(photos[0]).is_dir():
        _locate_one(Path(photos[0]), as_json, quiet, opts)
    else:
        _locate_batch(photos, out, workers, as_json, quiet, opts)


def _locate_one(image: Path, as_json: bool, quiet: bool, opts: AgentOptions) -> None:
    from geoguide.agent.factory import build_context
    from geoguide.agent.graph import locate

    ctx = build_context(opts.context_spec())
    try:
        pred = locate(ctx, image, on_event=None if (quiet or as_json) else print_event)
    finally:
        ctx.close()
    typer.echo(pred.model_dump_json(indent=2) if as_json else format_prediction(pred))
    check_service(pred)
    if pred.lat is None:
        from geoguide.app.options import NoAnswer

        raise NoAnswer(f"no answer for {image}: {'; '.join(pred.notes) or pred.prior_error or 'nothing found'}")


def _locate_batch(photos: list[str], out: Path | None, workers: int, as_json: bool, quiet: bool,
                  opts: AgentOptions) -> None:
    from geoguide.api import Geolocator
    from geoguide.batch import check_out, expand_photos, run_batch

    if out is not None:
        check_out(out)  # a format geoguide cannot write fails before any model loads
    paths = expand_photos(photos)

    def show(row) -> None:
        if as_json:
            typer.echo(row.model_dump_json())
        elif row.status == "located":
            typer.echo(f"{row.photo}\t{row.lat:.5f}, {row.lon:.5f}\t{row.place or ''}\t{row.source}"
                       + ("\t(EXIF has GPS)" if row.exif_gps else ""))
        else:
            typer.echo(f"{row.photo}\tfailed: {row.error}")

    with Geolocator.from_spec(opts.context_spec()) as g:
        s = run_batch(g, paths, out, workers=workers, progress=not quiet, emit=show if out is None else None)
    where = f" -> {s.out}" if s.out else ""
    typer.echo(f"located {s.located} of {s.photos} photos ({s.failed} failed, {s.skipped} already done, "
               f"{s.exif_gps} with GPS in their EXIF){where}", err=True)


@commands.command("models")
def models_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Every descriptor and prior backend: can it run here, where it looks for weights, how to get them."""
    from geoguide.agent.models_catalog import catalog

    cat = catalog()
    if as_json:
        echo_json(cat.model_dump())
        return
    mark = {True: "yes", False: "no", None: "depends"}
    for m in cat.models:
        typer.echo(f"{m.kind:<10} {m.name:<18} {mark[m.runs_here]:<8} {m.detail}")
        if m.runs_here is False and m.looks_in:
            typer.echo(f"{'':<38}looks in: {'; '.join(m.looks_in)}")
        if m.runs_here is False and m.how_to_get:
            typer.echo(f"{'':<38}get them: {m.how_to_get}")
