"""The derived cache (core.derived): files made once from installed files, keyed by their sources."""

from __future__ import annotations

import os

import numpy as np
import pytest

from geoguide.core.derived import derived, derived_path, load_arrays, save_arrays


def test_arrays_round_trip_memory_mapped_and_a_cut_file_is_refused(tmp_path):
    arrays = {"a": np.arange(10, dtype=np.int16), "b": np.random.default_rng(0).normal(size=(3, 5)),
              "codes": np.array(["FR", "IT"], dtype="<U2"), "empty": np.zeros((0, 3), dtype=np.float32)}
    path = tmp_path / "x.arrays"
    save_arrays(path, arrays)
    back = load_arrays(path)
    for name, a in arrays.items():
        np.testing.assert_array_equal(back[name], a)
        assert back[name].dtype == a.dtype and back[name].shape == a.shape
    assert isinstance(back["b"], np.memmap) and not back["b"].flags.writeable
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(ValueError, match="cut short"):
        load_arrays(path)
    (tmp_path / "y.arrays").write_bytes(b"PK\x03\x04 not a pack")
    with pytest.raises(ValueError, match="not an array pack"):
        load_arrays(tmp_path / "y.arrays")


def test_derived_is_made_once_and_remade_when_a_source_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    source = tmp_path / "table.json"
    source.write_text("[1, 2]")
    made = []

    def make(out):
        made.append(out)
        out.write_text(source.read_text())

    first = derived("table", [source], "1", ".txt", make)
    assert first.read_text() == "[1, 2]" and derived("table", [source], "1", ".txt", make) == first and len(made) == 1
    source.write_text("[1, 2, 3]")
    os.utime(source, ns=(1, 1))
    second = derived("table", [source], "1", ".txt", make)
    assert second != first and second.read_text() == "[1, 2, 3]" and len(made) == 2
    assert not first.exists()  # the stale copy is gone
    assert derived_path("table", [source], "2", ".txt") != second  # a new converter version: a new file
    assert sorted(p.name for p in second.parent.iterdir()) == [second.name]  # no temporary left


def test_a_failed_make_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    source = tmp_path / "s"
    source.write_text("x")

    def broken(out):
        out.write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        derived("s", [source], "1", ".txt", broken)
    assert list((tmp_path / "cache" / "geoguide" / "derived").iterdir()) == []
