"""ctypes bindings of libloraflip_lora: finding and loading it, the structs, constants and
functions of include/loraflip_lora.h, and its statuses turned into exceptions. loraflip.lora
(the array API) is built on this and exposes all of it; its docstring says where the library is
looked for.

Each binding carries its C declaration in the comment above it, and sets argtypes and restype.
"""
from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Callable

from . import _lib
from ._errors import LoraflipError, error_for
from ._lib import LF_E_INVALID_ARGUMENT, LF_E_UNSUPPORTED

# ---- constants (loraflip_lora.h; its dtypes and statuses are loraflip.h's: _lib's LF_DTYPE_* and
# LF_E_*, which loraflip.lora exposes too) ----
LF_LORA_SELECT_ROWS = 0
LF_LORA_SELECT_SEGMENTS = 1
LF_LORA_NO_ADAPTER = -1
LF_LORA_MAX_RANK = 128
LF_LORA_HIDDEN_MULTIPLE = 8

LF_LORA_SCALE_STANDARD = 0
LF_LORA_SCALE_RSLORA = 1

LF_LORA_DEVICE_ERR_INDEX = 1
LF_LORA_DEVICE_ERR_ADAPTER = 2
LF_LORA_DEVICE_ERR_SEGMENTS = 4

# ---- finding and loading libloraflip_lora ----
_SONAMES = ("libloraflip_lora.so", "libloraflip_lora.so.0")


def _next_to_libloraflip() -> list[tuple[str, str]]:
    """Where the package found libloraflip: both libraries are installed to the same libdir,
    and in a build folder this one is <build>/kernels/lora next to <build>/client/c."""
    out: list[tuple[str, str]] = []
    if os.sep in _lib.path:
        client_dir = Path(os.path.abspath(_lib.path)).parent
        for so in _SONAMES:
            out.append(("next to libloraflip", str(client_dir / so)))
        if client_dir.name == "c" and client_dir.parent.name == "client":
            for so in _SONAMES:
                out.append(("build folder of libloraflip",
                            str(client_dir.parent.parent / "kernels" / "lora" / so)))
    return out


lib, library_path = _lib.load_first(
    "libloraflip_lora", "LORAFLIP_LORA_LIBRARY",
    _lib.candidates("LORAFLIP_LORA_LIBRARY", _SONAMES, "kernels/lora", "loraflip_lora",
                    after_env=_next_to_libloraflip()))


# ---- structs ----
class lf_lora_adapter_t(ctypes.Structure):
    # typedef struct lf_lora_adapter_t { const void *a; const void *b; int32_t rank;
    #   int32_t dtype; float scale; int32_t reserved; } lf_lora_adapter_t;
    _fields_ = [
        ("a", ctypes.c_void_p),
        ("b", ctypes.c_void_p),
        ("rank", ctypes.c_int32),
        ("dtype", ctypes.c_int32),
        ("scale", ctypes.c_float),
        ("reserved", ctypes.c_int32),
    ]


class lf_lora_batch_t(ctypes.Structure):
    # typedef struct lf_lora_batch_t { int32_t dtype; int32_t n_rows; int32_t h_in;
    #   int32_t h_out; int64_t ldx; int64_t ldy; int32_t max_rank; int32_t select;
    #   const lf_lora_adapter_t *adapters; int32_t n_adapters; const int32_t *row_adapter;
    #   int32_t n_segments; const int32_t *seg_offsets; const int32_t *seg_adapter;
    # } lf_lora_batch_t;
    # The pointers are c_void_p so that device addresses (CUDA) fit as well as host ones.
    _fields_ = [
        ("dtype", ctypes.c_int32),
        ("n_rows", ctypes.c_int32),
        ("h_in", ctypes.c_int32),
        ("h_out", ctypes.c_int32),
        ("ldx", ctypes.c_int64),
        ("ldy", ctypes.c_int64),
        ("max_rank", ctypes.c_int32),
        ("select", ctypes.c_int32),
        ("adapters", ctypes.c_void_p),
        ("n_adapters", ctypes.c_int32),
        ("row_adapter", ctypes.c_void_p),
        ("n_segments", ctypes.c_int32),
        ("seg_offsets", ctypes.c_void_p),
        ("seg_adapter", ctypes.c_void_p),
    ]


if ctypes.sizeof(ctypes.c_void_p) == 8:  # the sizes the header documents for 64-bit targets
    assert ctypes.sizeof(lf_lora_adapter_t) == 32 and ctypes.sizeof(lf_lora_batch_t) == 88

# typedef struct CUstream_st *lf_lora_stream_t;  typedef struct cublasContext *lf_lora_cublas_t;
lf_lora_stream_t = ctypes.c_void_p
lf_lora_cublas_t = ctypes.c_void_p

_P = ctypes.POINTER
_c_int = ctypes.c_int
_c_int32 = ctypes.c_int32
_c_int64 = ctypes.c_int64
_c_void_p = ctypes.c_void_p
_batch_p = _P(lf_lora_batch_t)


def _bind(name, restype, argtypes):
    fn = getattr(lib, name)
    fn.restype = restype
    fn.argtypes = argtypes
    return fn


# ---- functions (pointers to data are c_void_p: callers pass addresses as ints) ----
# const char *lf_lora_strerror(int status);
lf_lora_strerror = _bind("lf_lora_strerror", ctypes.c_char_p, [_c_int])
# int lf_lora_scale(float alpha, int32_t rank, int32_t kind, float *out_scale);
lf_lora_scale = _bind("lf_lora_scale", _c_int,
                      [ctypes.c_float, _c_int32, _c_int32, _P(ctypes.c_float)])
# int lf_lora_cpu_set_threads(int32_t n);
lf_lora_cpu_set_threads = _bind("lf_lora_cpu_set_threads", _c_int, [_c_int32])
# int lf_lora_shrink(const lf_lora_batch_t *batch, const void *x, float *v);
lf_lora_shrink = _bind("lf_lora_shrink", _c_int, [_batch_p, _c_void_p, _c_void_p])
# int lf_lora_expand(const lf_lora_batch_t *batch, const float *v, void *y);
lf_lora_expand = _bind("lf_lora_expand", _c_int, [_batch_p, _c_void_p, _c_void_p])
# int lf_lora_apply(const lf_lora_batch_t *batch, const void *x, void *y);
lf_lora_apply = _bind("lf_lora_apply", _c_int, [_batch_p, _c_void_p, _c_void_p])
# int lf_lora_cuda_shrink(const lf_lora_batch_t *batch, const void *x, float *v,
#                         int32_t *device_error, lf_lora_stream_t stream);
lf_lora_cuda_shrink = _bind("lf_lora_cuda_shrink", _c_int,
                            [_batch_p, _c_void_p, _c_void_p, _c_void_p, lf_lora_stream_t])
# int lf_lora_cuda_expand(const lf_lora_batch_t *batch, const float *v, void *y,
#                         int32_t *device_error, lf_lora_stream_t stream);
lf_lora_cuda_expand = _bind("lf_lora_cuda_expand", _c_int,
                            [_batch_p, _c_void_p, _c_void_p, _c_void_p, lf_lora_stream_t])
# int lf_lora_cuda_apply(const lf_lora_batch_t *batch, const void *x, void *y, void *workspace,
#                        size_t *workspace_bytes, int32_t *device_error, lf_lora_stream_t stream);
lf_lora_cuda_apply = _bind("lf_lora_cuda_apply", _c_int,
                           [_batch_p, _c_void_p, _c_void_p, _c_void_p, _P(ctypes.c_size_t),
                            _c_void_p, lf_lora_stream_t])
# int lf_lora_cuda_apply_single(int32_t dtype, int32_t n_rows, int32_t h_in, int32_t h_out,
#                               const void *x, int64_t ldx, void *y, int64_t ldy,
#                               const lf_lora_adapter_t *adapter, void *workspace,
#                               size_t *workspace_bytes, lf_lora_cublas_t cublas,
#                               lf_lora_stream_t stream);
lf_lora_cuda_apply_single = _bind("lf_lora_cuda_apply_single", _c_int,
                                  [_c_int32, _c_int32, _c_int32, _c_int32, _c_void_p, _c_int64,
                                   _c_void_p, _c_int64, _P(lf_lora_adapter_t), _c_void_p,
                                   _P(ctypes.c_size_t), lf_lora_cublas_t, lf_lora_stream_t])


# ---- statuses (loraflip.h's LF_E_* codes, so loraflip's exception classes carry them) ----
def call_failed(status: int, fn: str, why_invalid: Callable[[], str]) -> LoraflipError:
    """The exception for a status other than LF_OK from the lf_lora_* function named `fn`. The
    library returns a status only: `why_invalid()` works out what was wrong with the arguments
    (for LF_E_INVALID_ARGUMENT), after the fact."""
    cuda = fn.startswith("lf_lora_cuda")
    if status == LF_E_INVALID_ARGUMENT:
        why = why_invalid()
    elif status == LF_E_UNSUPPORTED:
        why = (f"{library_path} was built without CUDA" if cuda else
               "an adapter of another dtype than the batch")
    else:
        why = ("a CUDA error (no usable device, launch failure, ...)" if cuda else
               "out of memory, or a thread could not start; y / v are unspecified")
    return error_for(status, f"{fn}: {why}")
