"""Read the weights of a Caffe ``.caffemodel`` without Caffe: our own protobuf wire-format reader
for the few messages of ``caffe.proto`` (BVLC/caffe ``src/caffe/proto/caffe.proto``) that hold
them, so a published Caffe network (AMOSNet) loads with numpy alone (pycaffe needs a Caffe build,
and generated ``caffe_pb2`` code needs protoc).

The messages and field numbers read (everything else is skipped by its wire type):
- ``NetParameter``: ``layer = 100`` (``LayerParameter``) and the pre-2015 ``layers = 2``
  (``V1LayerParameter``);
- ``LayerParameter``: ``name = 1``, ``type = 2`` (a string), ``blobs = 7``;
- ``V1LayerParameter``: ``name = 4``, ``type = 5`` (an enum: 4 CONVOLUTION, 14 INNER_PRODUCT),
  ``blobs = 6``;
- ``BlobProto``: ``shape = 7`` (``BlobShape``: ``dim = 1``, packed int64), ``data = 5`` (packed
  float), ``double_data = 8`` (packed double), and the legacy ``num = 1``, ``channels = 2``,
  ``height = 3``, ``width = 4``.
A truncated or malformed file is a ``ModelLoadError`` saying where the reading stopped.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np

from geoguide.indices.descriptors.base import ModelLoadError

V1_TYPES = {4: "Convolution", 14: "InnerProduct"}
MAX_DIM = 1 << 31  # a blob side beyond this is a malformed file, not a network


class _Malformed(ValueError):
    pass


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise _Malformed("a varint runs past the end")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise _Malformed("a varint longer than 10 bytes")


def fields(buf: memoryview) -> list[tuple[int, int, int | memoryview]]:
    """(field number, wire type, value) of one message: an int for varint / fixed fields, the bytes
    of a length-delimited one."""
    out: list[tuple[int, int, int | memoryview]] = []
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            if pos + 8 > len(buf):
                raise _Malformed("a 64-bit field runs past the end")
            value, pos = int.from_bytes(buf[pos:pos + 8], "little"), pos + 8
        elif wire == 2:
            size, pos = _varint(buf, pos)
            if pos + size > len(buf):
                raise _Malformed(f"field {number} claims {size} bytes past the end")
            value, pos = buf[pos:pos + size], pos + size
        elif wire == 5:
            if pos + 4 > len(buf):
                raise _Malformed("a 32-bit field runs past the end")
            value, pos = int.from_bytes(buf[pos:pos + 4], "little"), pos + 4
        else:
            raise _Malformed(f"wire type {wire} (groups are not used by caffe.proto)")
        out.append((number, wire, value))
    return out


def _packed_varints(value: int | memoryview) -> list[int]:
    if isinstance(value, int):
        return [value]
    out, pos = [], 0
    while pos < len(value):
        v, pos = _varint(value, pos)
        out.append(v)
    return out


def _floats(parts: list[tuple[int, int | memoryview]], fmt: str) -> np.ndarray:
    """Packed (wire type 2) or one-per-field values of a ``repeated float/double``."""
    size = struct.calcsize(fmt)
    chunks = []
    for wire, value in parts:
        if wire == 2:
            assert isinstance(value, memoryview)
            if len(value) % size:
                raise _Malformed("a packed float array of a length that is no multiple of its size")
            chunks.append(np.frombuffer(value, dtype="<" + fmt))
        elif (wire, size) in ((5, 4), (1, 8)):  # one unpacked value, 32- or 64-bit as the type says
            assert isinstance(value, int)
            chunks.append(np.frombuffer(value.to_bytes(size, "little"), dtype="<" + fmt))
        else:
            raise _Malformed(f"a float array sent with wire type {wire}")
    return np.concatenate(chunks) if chunks else np.zeros(0, np.float32)


def blob(buf: memoryview) -> np.ndarray:
    """One ``BlobProto`` as a float32 array of its shape."""
    shape: list[int] = []
    legacy = {1: 0, 2: 0, 3: 0, 4: 0}
    data: list[tuple[int, int | memoryview]] = []
    doubles: list[tuple[int, int | memoryview]] = []
    for number, wire, value in fields(buf):
        if number == 7 and isinstance(value, memoryview):
            shape = [d for n, _, v in fields(value) if n == 1 for d in _packed_varints(v)]
        elif number == 5:
            data.append((wire, value))
        elif number == 8:
            doubles.append((wire, value))
        elif number in legacy and isinstance(value, int):
            legacy[number] = value
    values = _floats(data, "f") if data else _floats(doubles, "d").astype(np.float32)
    if not shape:
        shape = [legacy[k] for k in (1, 2, 3, 4)]
        while len(shape) > 1 and shape[0] == 1 and math.prod(shape[1:]) == values.size:
            shape = shape[1:]  # legacy 4-D blobs of biases / fc weights: (1, 1, 1, n) -> (n,)
    if any(d < 0 or d > MAX_DIM for d in shape) or math.prod(shape) != values.size:
        raise _Malformed(f"a blob of shape {shape} holds {values.size} values")
    return values.reshape(shape).astype(np.float32, copy=False)


def read_caffemodel(path: Path) -> dict[str, tuple[str, list[np.ndarray]]]:
    """layer name -> (layer type, its blobs) for every layer that has weights, in file order."""
    try:
        raw = memoryview(path.read_bytes())
        layers: dict[str, tuple[str, list[np.ndarray]]] = {}
        for number, _, value in fields(raw):
            if number not in (100, 2) or not isinstance(value, memoryview):
                continue
            v1 = number == 2
            name, kind, blobs = "", "", []
            for n, _, v in fields(value):
                if n == (4 if v1 else 1) and isinstance(v, memoryview):
                    name = bytes(v).decode("utf-8", "replace")
                elif n == (5 if v1 else 2):
                    if v1 and isinstance(v, int):
                        kind = V1_TYPES.get(v, f"V1 type {v}")
                    elif not v1 and isinstance(v, memoryview):
                        kind = bytes(v).decode()
                elif n == (6 if v1 else 7) and isinstance(v, memoryview):
                    blobs.append(blob(v))
            if blobs:
                layers[name] = (kind, blobs)
    except (_Malformed, UnicodeDecodeError, ValueError, OverflowError) as e:
        raise ModelLoadError(f"{path} is not a readable .caffemodel ({e})") from None
    if not layers:
        raise ModelLoadError(f"{path} holds no layer with weights: it is not a .caffemodel (a deploy.prototxt is "
                             "text; the weights are the binary .caffemodel)")
    return layers
