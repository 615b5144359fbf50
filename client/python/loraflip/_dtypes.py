"""The one table of loraflip element types: the LF_DTYPE_* codes of loraflip.h with every
spelling the package needs (names, numpy, DLPack, __cuda_array_interface__, torch).

loraflip_lora.h takes the same LF_DTYPE_* numbers (F32, F16 and BF16 only), so a pinned view's
dtype code goes straight to the LoRA API; the rest of the package (sources, reads, writes,
_dlpack, _safetensors, lora) reads this table instead of keeping tables of their own that could
drift apart (the LoRA header once numbered f32, f16 and bf16 0, 1, 2 of its own, so an f16
view's 2 was read there as bf16).
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np

from . import _lib as L
from ._errors import InvalidArgument

# DLDataTypeCode of dlpack.h.
kDLInt, kDLUInt, kDLFloat, kDLBfloat = 0, 1, 2, 4


class DType(NamedTuple):
    code: int                  # LF_DTYPE_* (loraflip.h)
    name: str                  # lf_dtype_name(): "f32", "bf16", ...
    long_name: str             # numpy's and torch's spelling: "float32", "bfloat16", ...
    kind: str                  # numpy kind: "f" (bf16 included), "i" or "u"
    itemsize: int              # bytes
    numpy: Optional[np.dtype]  # None for bf16: plain numpy has none (ml_dtypes adds one)
    dlpack: tuple[int, int]    # (DLDataTypeCode, bits)
    typestr: str               # __cuda_array_interface__; bf16's "<V2" is what torch and
                               # ml_dtypes write, most consumers read it as opaque 2-byte records
    lora: bool                 # taken by the LoRA API (loraflip_lora.h)


DTYPES = (
    DType(L.LF_DTYPE_F32, "f32", "float32", "f", 4, np.dtype("<f4"), (kDLFloat, 32), "<f4", True),
    DType(L.LF_DTYPE_F16, "f16", "float16", "f", 2, np.dtype("<f2"), (kDLFloat, 16), "<f2", True),
    DType(L.LF_DTYPE_BF16, "bf16", "bfloat16", "f", 2, None, (kDLBfloat, 16), "<V2", True),
    DType(L.LF_DTYPE_F64, "f64", "float64", "f", 8, np.dtype("<f8"), (kDLFloat, 64), "<f8", False),
    DType(L.LF_DTYPE_I8, "i8", "int8", "i", 1, np.dtype("i1"), (kDLInt, 8), "|i1", False),
    DType(L.LF_DTYPE_U8, "u8", "uint8", "u", 1, np.dtype("u1"), (kDLUInt, 8), "|u1", False),
    DType(L.LF_DTYPE_I32, "i32", "int32", "i", 4, np.dtype("<i4"), (kDLInt, 32), "<i4", False),
    DType(L.LF_DTYPE_I64, "i64", "int64", "i", 8, np.dtype("<i8"), (kDLInt, 64), "<i8", False),
)

BY_CODE = {d.code: d for d in DTYPES}
# "f32" and "float32" (also what str() of a numpy or torch dtype gives, less "torch.") -> code
BY_NAME = {n: d.code for d in DTYPES for n in (d.name, d.long_name)}
# code -> numpy dtype, for the types plain numpy has
NUMPY = {d.code: d.numpy for d in DTYPES if d.numpy is not None}
DLPACK = {d.code: d.dlpack for d in DTYPES}
TYPESTR = {d.code: d.typestr for d in DTYPES}
# The subset loraflip_lora.h accepts; the library refuses every other code (LF_E_INVALID_ARGUMENT).
LORA = {d.code: d for d in DTYPES if d.lora}
# numpy dtype -> code: the hot path of publish (_sources.py) is one dict lookup
NUMPY_CODES = {nd: code for code, nd in NUMPY.items()}


def dtype_code(dtype) -> int:
    """LF_DTYPE_* for a name ("f32", "bfloat16", ...), a numpy dtype or a torch dtype."""
    if isinstance(dtype, int):
        return dtype
    s = str(dtype).replace("torch.", "")
    if s in BY_NAME:
        return BY_NAME[s]
    try:
        d = np.dtype(dtype)
    except TypeError:
        raise InvalidArgument(L.LF_E_INVALID_ARGUMENT, f"unsupported dtype {dtype!r}") from None
    for code, nd in NUMPY.items():
        if d == nd:
            return code
    raise InvalidArgument(L.LF_E_INVALID_ARGUMENT,
                          f"unsupported dtype {dtype!r} (loraflip: {', '.join(sorted(set(BY_NAME)))})")


def dtype_name(code: int) -> str:
    return L.lf_dtype_name(code).decode()


def numpy_dtype(code: int):
    """The numpy dtype of a code; None for bf16 unless ml_dtypes is installed."""
    if code in NUMPY:
        return NUMPY[code]
    try:  # bf16 as a numpy dtype, where the optional ml_dtypes package provides one
        import ml_dtypes  # type: ignore[import-not-found]
        return np.dtype(ml_dtypes.bfloat16)
    except ImportError:
        return None


def code_of_numpy(d: np.dtype) -> int:
    """The code of a numpy dtype (ml_dtypes' bfloat16 included); TypeError for any other."""
    for code, nd in NUMPY.items():
        if d == nd:
            return code
    if d.name == "bfloat16":
        return L.LF_DTYPE_BF16
    raise TypeError(f"no loraflip dtype for {d}")
