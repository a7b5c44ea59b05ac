"""A folder of the user's own geotagged photos: ground truth from EXIF GPS, author from EXIF Artist."""

from __future__ import annotations

import os
from pathlib import Path

from PIL import ExifTags, Image

from geoguide.indices.photosets.common import (
    DatasetLoader,
    LoadedDataset,
    LoadReport,
    _Collector,
    inside,
    register,
)

EXIF_SUFFIXES = frozenset({".jpg", ".jpeg", ".tif", ".tiff", ".png", ".webp"})


def _rational(v) -> float:
    """An EXIF rational as float: PIL's IFDRational, or a legacy (numerator, denominator) pair."""
    if isinstance(v, tuple) and len(v) == 2:
        num, den = v
        if den == 0:
            raise ValueError("zero denominator")
        return num / den
    return float(v)


def _dms(value, ref, axis: str) -> float:
    """Degrees/minutes/seconds plus an N/S/E/W reference -> signed decimal degrees."""
    parts = value if isinstance(value, list | tuple) else [value]  # D, M, S or already decimal degrees
    deg = sum(_rational(p) / 60.0**i for i, p in enumerate(parts[:3]))
    if isinstance(ref, bytes):
        ref = ref.decode("ascii", "replace")
    ref = (ref or "").strip("\x00 ").upper()
    negative, positive = ("S", "N") if axis == "latitude" else ("W", "E")
    if ref == negative:
        return -abs(deg)
    if ref == positive:
        return abs(deg)
    if ref:
        raise ValueError(f"{axis} reference {ref!r} is not {positive}/{negative}")
    return deg  # no reference: keep the stored sign


def _gps_from_exif(exif: Image.Exif) -> tuple[float, float] | None:
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    if ExifTags.GPS.GPSLatitude not in gps or ExifTags.GPS.GPSLongitude not in gps:
        return None
    lat = _dms(gps[ExifTags.GPS.GPSLatitude], gps.get(ExifTags.GPS.GPSLatitudeRef), "latitude")
    lon = _dms(gps[ExifTags.GPS.GPSLongitude], gps.get(ExifTags.GPS.GPSLongitudeRef), "longitude")
    return lat, lon


def exif_gps(path: str | os.PathLike) -> tuple[float, float] | None:
    """(lat, lon) from a photo's EXIF GPS block, or None when it has none; ``ValueError`` if malformed."""
    with Image.open(path) as img:
        return _gps_from_exif(img.getexif())


def _read_exif(path: Path) -> tuple[tuple[float, float] | None, str | None]:
    """GPS and Artist from one open of the file."""
    with Image.open(path) as img:
        exif = img.getexif()
    artist = str(exif.get(ExifTags.Base.Artist) or "").strip("\x00 ")
    return _gps_from_exif(exif), artist or None


@register("exif")
class ExifLoader(DatasetLoader):
    """A folder of the user's own geotagged photos: ground truth is the EXIF GPS, author the EXIF Artist.

    Files with an image suffix but no (or broken) GPS are reported as bad rows; other files are ignored.
    """

    def __init__(
        self,
        labels: str | os.PathLike | None = None,
        images: str | os.PathLike | None = None,
        *,
        recursive: bool = False,
        require_images: bool = False,  # accepted for a uniform call; the photos are always there
    ) -> None:
        folder = images if images is not None else labels
        if folder is None or not Path(folder).is_dir():
            raise FileNotFoundError(f"exif: pass images=<folder of photos>, got {folder!r}")
        self.folder = Path(folder)
        self.recursive = recursive

    def load(self) -> LoadedDataset:
        report = LoadReport(dataset=self.name, source=str(self.folder))
        collector = _Collector(report, self.folder)
        files = self.folder.rglob("*") if self.recursive else self.folder.iterdir()
        for path in sorted(p for p in files if p.is_file() and p.suffix.lower() in EXIF_SUFFIXES):
            image_id = path.relative_to(self.folder).as_posix()
            if not inside(path, self.folder):  # refused before its EXIF is read
                report.skip(f"links to {path.resolve()}, outside the image folder {self.folder}; refused",
                            image_id=image_id)
                continue
            try:
                latlon, author = _read_exif(path)
            except (OSError, ValueError, ZeroDivisionError, TypeError) as exc:
                report.skip(f"unreadable EXIF ({exc})", image_id=image_id)
                continue
            if latlon is None:
                report.skip("no GPS in EXIF", image_id=image_id)
                continue
            collector.add(None, image_id, *latlon, author)
        return collector.finish(self.expected_n)
