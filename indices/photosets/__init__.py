"""Benchmark datasets behind one registry and one row-validation path.

Every loader returns a :class:`LoadedDataset`: the good :class:`Sample` rows and a :class:`LoadReport`.
A malformed row (missing column, unparsable or out-of-range coordinate, duplicate id, image file absent
when an image folder is given, a row the csv module rejects) is counted, recorded in ``report.dropped``
as ``{id, line, reason}`` (``id`` when the row has one; ``line`` is the row's first line in the file),
logged, and skipped: a benchmark run neither dies on row 2,811 nor quietly evaluates on fewer images
than it claims (``n_read = n_ok + n_dropped``; an evaluation counts dropped rows as misses).

A file that cannot be read as a table at all *is* an error, raised as :class:`LabelsError` (a
``ValueError``) in one line naming the file, the line where there is one, and the fix: a folder
where the ``csv`` loader needs a file, bytes that are not UTF-8 (silently replacing them would turn
``café.jpg`` into an id that matches no photo), a quote that is never closed (the csv module would
read the rest of the file as one field and drop every row after it), columns that cannot be
identified, and labels given without the photos when the caller needs them (``require_images=True``:
building an index or running the agent, as opposed to scoring predictions against ground truth).

The loaders: ``tables`` (label files: the layouts below) and ``exif`` (a folder of the user's own
geotagged photos); this module holds what they share (``Sample``, ``LoadReport``, the registry).
"""

from geoguide.indices.photosets.common import (
    DATASETS,
    IMAGE_SUFFIXES,
    MAX_DROPPED,
    MAX_PROBLEMS,
    DatasetLoader,
    DroppedRow,
    LabelsError,
    LoadedDataset,
    LoadReport,
    Sample,
    inside,
    load_dataset,
    parse_coord,
    register,
    resolve_image,
    shared_data_root,
)
from geoguide.indices.photosets.exif import ExifLoader, exif_gps
from geoguide.indices.photosets.tables import ColumnMap, TableLoader

__all__ = [
    "DATASETS", "IMAGE_SUFFIXES", "MAX_DROPPED", "MAX_PROBLEMS", "ColumnMap", "DatasetLoader", "DroppedRow",
    "ExifLoader", "LabelsError", "LoadReport", "LoadedDataset", "Sample", "TableLoader", "exif_gps", "inside",
    "load_dataset", "parse_coord", "register", "resolve_image", "shared_data_root",
]
