"""Sources: what publish(), create() and Writer.copy_in() accept as a tensor (numpy arrays and
anything numpy.asarray takes, torch tensors, RawTensors such as safetensors files give, and
loraflip's own views), each reduced to an address, a dtype and a shape to copy from."""
from __future__ import annotations

from typing import Any, NamedTuple, Optional

import numpy as np

from . import _dtypes
from . import _lib as L
from ._dtypes import NUMPY, NUMPY_CODES, dtype_code, dtype_name
from ._errors import InvalidArgument
from ._safetensors import RawTensor
from ._views import PinnedArray


class Source(NamedTuple):
    dtype: int
    shape: tuple
    address: int
    nbytes: int
    keep: Any  # keeps the memory alive while it is copied
    device: int = -1  # -1: host memory; else the CUDA ordinal of a torch tensor's memory


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "data_ptr")


# Filled by the first torch tensor that takes the general path (torch is never imported here:
# `import loraflip` needs only numpy). The plain tensor types (torch.Tensor, nn.Parameter; not
# subclasses such as DTensor, which take the general path), the strided layout, and torch dtype
# -> LF_DTYPE_* code. Publish meets every tensor of every version (hundreds for a large
# model's adapter): the general path's detach, device object and dtype-name lookups cost
# several times what the fast path's attribute reads do.
_torch_plain_types: frozenset = frozenset()
_torch_codes: dict = {}
_torch_strided = None
# Source(...) runs NamedTuple's generated __new__, a Python function; the fast path builds the
# tuple directly (all six fields given).
_new_source = tuple.__new__


def _learn_torch(torch_mod) -> None:
    global _torch_plain_types, _torch_strided
    if _torch_strided is None:
        _torch_codes.update({getattr(torch_mod, d.long_name): d.code
                             for d in _dtypes.DTYPES if hasattr(torch_mod, d.long_name)})
        _torch_strided = torch_mod.strided
        _torch_plain_types = frozenset((torch_mod.Tensor, torch_mod.nn.Parameter))


def _torch_fast(x, want: tuple[int, tuple]) -> Optional[Source]:
    """A contiguous CPU torch tensor of exactly the slot's dtype and shape (want's shape is a
    tuple), or None."""
    d = _torch_codes.get(x.dtype)
    if (d == want[0] and x.layout is _torch_strided and x.is_cpu and x.is_contiguous()
            and x.shape == want[1]):
        return _new_source(Source, (d, want[1], x.data_ptr(), x.nbytes, x, -1))
    return None


def _bf16_bits(a: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bit patterns, rounding to nearest even (NaN stays NaN)."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    rounded = ((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16))
    out = rounded.astype(np.uint16)
    nan = np.isnan(a)
    if nan.any():
        out[nan] = 0x7FC0
    return out


def source(name: str, x, want: Optional[tuple[int, tuple]], cast: bool) -> Source:
    """Normalizes one tensor; checks it against the slot's (dtype, shape) when known."""
    if type(x) is np.ndarray and x.dtype in NUMPY_CODES and x.flags.c_contiguous and (
            want is None or (NUMPY_CODES[x.dtype] == want[0] and x.shape == tuple(want[1]))):
        # The common case, kept cheap: publish runs it for every tensor of every version.
        return Source(NUMPY_CODES[x.dtype], x.shape, x.__array_interface__["data"][0], x.nbytes, x)
    if want is not None and type(x) in _torch_plain_types:
        fast = _torch_fast(x, want)
        if fast is not None:
            return fast
    if isinstance(x, RawTensor):
        d, shape, keep = x.dtype, x.shape, np.ascontiguousarray(x.data)
        address, nbytes, device = keep.ctypes.data, keep.nbytes, -1
    elif _is_torch(x):
        import torch  # present: x is a torch tensor
        _learn_torch(torch)
        t = x.detach()
        if t.device.type not in ("cpu", "cuda"):
            t = t.cpu()
        # CUDA tensors stay where they are: Writer._copy copies them device to device into a
        # device-placed slot, or brings them to host memory for a host-placed one.
        d = dtype_code(t.dtype)
        if cast and want is not None and d != want[0] and _dtypes.BY_CODE[want[0]].kind == "f":
            t = t.to(getattr(torch, _dtypes.BY_CODE[want[0]].long_name))
            d = want[0]
        t = t.contiguous()
        shape, keep = tuple(t.shape), t
        address, nbytes = t.data_ptr(), t.numel() * t.element_size()
        device = t.get_device() if t.device.type == "cuda" else -1
    else:
        device = -1
        if isinstance(x, PinnedArray) and x._lf_guard is not None:
            x._lf_guard.check()  # np.asarray below would bypass the guard
        a = np.asarray(x)
        if a.dtype.kind not in "fiu" or (a.dtype.byteorder == ">"):
            raise InvalidArgument(L.LF_E_INVALID_ARGUMENT,
                                  f"tensor '{name}': unsupported dtype {a.dtype}")
        d = dtype_code("bf16") if a.dtype.name == "bfloat16" else dtype_code(a.dtype)
        if cast and want is not None and d != want[0]:
            if want[0] == L.LF_DTYPE_BF16:
                a, d = _bf16_bits(a), want[0]
            elif want[0] in NUMPY and a.dtype.kind == "f" and NUMPY[want[0]].kind == "f":
                a, d = a.astype(NUMPY[want[0]]), want[0]
        a = np.ascontiguousarray(a)
        shape, keep = tuple(a.shape), a
        address, nbytes = a.ctypes.data, a.nbytes
    if want is not None:
        wd, ws = want
        if d != wd:
            raise InvalidArgument(
                L.LF_E_INVALID_ARGUMENT,
                f"tensor '{name}' is {dtype_name(d)} but the adapter holds {dtype_name(wd)} "
                "(pass cast=True to convert floats)")
        if tuple(shape) != tuple(ws):
            raise InvalidArgument(L.LF_E_INVALID_ARGUMENT,
                                  f"tensor '{name}' has shape {tuple(shape)} but the adapter "
                                  f"holds {tuple(ws)}")
    return Source(d, tuple(shape), address, nbytes, keep, device)
