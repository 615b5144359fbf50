"""A small safetensors reader and writer (the format: 8-byte little-endian header length, a JSON
header, then the raw little-endian tensor bytes). Written here rather than imported so that the
package needs numpy only, and so that bf16 tensors (which safetensors.numpy cannot hold) pass
through as raw bytes."""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Iterable

import numpy as np

from . import _lib as L
from ._dtypes import dtype_code

# safetensors dtype name <-> LF_DTYPE_*
ST_TO_LF = {"F32": L.LF_DTYPE_F32, "F16": L.LF_DTYPE_F16, "BF16": L.LF_DTYPE_BF16,
            "F64": L.LF_DTYPE_F64, "I8": L.LF_DTYPE_I8, "U8": L.LF_DTYPE_U8,
            "I32": L.LF_DTYPE_I32, "I64": L.LF_DTYPE_I64}
LF_TO_ST = {v: k for k, v in ST_TO_LF.items()}
_MAX_HEADER = 100 << 20  # the reference implementation's limit


class RawTensor:
    """Tensor bytes with a loraflip dtype: how bf16 travels without torch or ml_dtypes.
    `data` is any C-contiguous buffer of exactly prod(shape) * itemsize bytes."""

    __slots__ = ("dtype", "shape", "data")

    def __init__(self, dtype: int | str, shape, data):
        if isinstance(dtype, str):
            dtype = dtype_code(dtype)
        self.dtype = int(dtype)
        self.shape = tuple(int(d) for d in shape)
        self.data = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) \
            else data.reshape(-1).view(np.uint8)
        want = int(np.prod(self.shape, dtype=np.int64)) * L.lf_dtype_size(self.dtype)
        if self.data.nbytes != want:
            raise ValueError(f"RawTensor: {self.data.nbytes} bytes for shape {self.shape} of "
                             f"{L.lf_dtype_name(self.dtype).decode()} (wants {want})")

    @property
    def nbytes(self) -> int:
        return self.data.nbytes

    def __repr__(self):
        return f"RawTensor({L.lf_dtype_name(self.dtype).decode()}, {self.shape})"


def read(path: str | os.PathLike) -> tuple[dict[str, RawTensor], dict]:
    """Tensors of a .safetensors file, in file order, and its __metadata__."""
    raw = Path(path).read_bytes()
    if len(raw) < 8:
        raise ValueError(f"{path}: not a safetensors file (too short)")
    (n,) = struct.unpack("<Q", raw[:8])
    if n > _MAX_HEADER or 8 + n > len(raw):
        raise ValueError(f"{path}: not a safetensors file (header length {n})")
    try:
        header = json.loads(raw[8:8 + n])
    except ValueError as e:
        raise ValueError(f"{path}: bad safetensors header: {e}") from None
    meta = header.pop("__metadata__", {}) or {}
    body = memoryview(raw)[8 + n:]
    out = {}
    for name, h in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        dt = h.get("dtype")
        if dt not in ST_TO_LF:
            raise ValueError(f"{path}: tensor '{name}' has dtype {dt}, which loraflip does not "
                             f"support ({', '.join(ST_TO_LF)})")
        b, e = h["data_offsets"]
        if not (0 <= b <= e <= len(body)):
            raise ValueError(f"{path}: tensor '{name}' lies outside the file")
        out[name] = RawTensor(ST_TO_LF[dt], h["shape"], body[b:e])
    return out, meta


def write(path: str | os.PathLike, tensors: Iterable[tuple[str, int, tuple, memoryview]],
          metadata: dict | None = None) -> None:
    """Writes (name, lf_dtype, shape, bytes) tensors, in the given order."""
    items = list(tensors)
    header: dict = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for name, dtype, shape, data in items:
        n = memoryview(data).nbytes
        header[name] = {"dtype": LF_TO_ST[dtype], "shape": list(shape),
                        "data_offsets": [offset, offset + n]}
        offset += n
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the reference writer pads the header to 8 bytes
    tmp = Path(str(path) + ".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for _, _, _, data in items:
            f.write(memoryview(data).cast("B"))
    os.replace(tmp, path)
