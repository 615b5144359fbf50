"""LoRA apply for generation loops from Python: y[i] += scale(a) * B_a (A_a x_i).

Two layers:

* ctypes bindings of every function of include/loraflip_lora.h (``lf_lora_*``),
  each with its C declaration in the comment above it and argtypes/restype set; the structs
  ``lf_lora_adapter_t`` and ``lf_lora_batch_t``; the ``LF_LORA_*`` constants, and the
  ``LF_DTYPE_*`` and ``LF_OK`` / ``LF_E_*`` codes of loraflip.h that the LoRA API shares (so a
  pinned view's dtype code is what ``lf_lora_adapter_t.dtype`` takes).
* a small array API: ``apply``, ``shrink``, ``expand``, ``scale``, ``set_threads``.

    from loraflip import lora
    with client.acquire("policy") as snap:                 # read-only views, not copied
        A, B = snap[prefix + "lora_A.weight"], snap[prefix + "lora_B.weight"]
        lora.apply(x, y, [(A, B, lora.scale(alpha, rank))], indices=row_adapter)  # y in place

Arrays: numpy arrays (float32, float16; bf16 as ml_dtypes.bfloat16 or as uint16 bit patterns
with ``dtype="bf16"``), loraflip's pinned views (used in place: nothing is copied), and torch
tensors (CPU ones through their data pointer; CUDA ones through the lf_lora_cuda_* launchers
on torch's current stream). torch is imported only when a torch tensor is passed.
The torch paths are written but were NOT run when this module was written (no torch and no
GPU on that machine); the numpy path is tested (tests/python/test_lora.py).

Errors raise loraflip.LoraflipError subclasses (InvalidArgument, Unsupported, ...) carrying the
LF_E_* status as ``.code`` and a message that names what was wrong.

Library search order (the first that loads wins):
  1. $LORAFLIP_LORA_LIBRARY (a file path)
  2. next to the libloraflip that the package loaded (loraflip.library_path), and, when that one
     lies in a meson build folder (<build>/client/c), <build>/kernels/lora
  3. the meson build folders of a checkout: <repo>/build/kernels/lora, <repo>/builddir/kernels/lora
  4. ctypes.util.find_library("loraflip_lora"), then the bare soname (the system loader's paths)
"""
from __future__ import annotations

import ctypes
from typing import Optional, Sequence

import numpy as np

from . import _dtypes, _lib, _lora_lib
from ._errors import InvalidArgument, LoraflipError, ReleasedError, error_for
from ._lib import (LF_DTYPE_BF16, LF_DTYPE_F16, LF_DTYPE_F32, LF_E_INTERNAL,
                   LF_E_INVALID_ARGUMENT, LF_E_UNSUPPORTED, LF_OK, LibraryNotFound)
from ._lora_lib import (LF_LORA_DEVICE_ERR_ADAPTER, LF_LORA_DEVICE_ERR_INDEX,
                        LF_LORA_DEVICE_ERR_SEGMENTS, LF_LORA_HIDDEN_MULTIPLE, LF_LORA_MAX_RANK,
                        LF_LORA_NO_ADAPTER, LF_LORA_SCALE_RSLORA, LF_LORA_SCALE_STANDARD,
                        LF_LORA_SELECT_ROWS, LF_LORA_SELECT_SEGMENTS, lf_lora_adapter_t,
                        lf_lora_apply, lf_lora_batch_t, lf_lora_cpu_set_threads,
                        lf_lora_cuda_apply, lf_lora_cuda_expand, lf_lora_cuda_shrink,
                        lf_lora_expand, lf_lora_scale, lf_lora_shrink, lf_lora_strerror,
                        library_path)
# The bindings not called here are this module's names too (the docstring's first layer).
from ._lora_lib import (lf_lora_cublas_t, lf_lora_cuda_apply_single,  # noqa: F401
                        lf_lora_stream_t, lib)
from ._reading import Tensor
from ._views import PinnedArray

__all__ = [
    "apply", "shrink", "expand", "scale", "set_threads", "library_path", "strerror",
    "LF_OK", "LF_E_INVALID_ARGUMENT", "LF_E_INTERNAL", "LF_E_UNSUPPORTED",
    "LF_DTYPE_F32", "LF_DTYPE_F16", "LF_DTYPE_BF16", "LF_LORA_SELECT_ROWS",
    "LF_LORA_SELECT_SEGMENTS", "LF_LORA_NO_ADAPTER", "LF_LORA_MAX_RANK",
    "LF_LORA_HIDDEN_MULTIPLE", "LF_LORA_SCALE_STANDARD", "LF_LORA_SCALE_RSLORA",
    "LF_LORA_DEVICE_ERR_INDEX", "LF_LORA_DEVICE_ERR_ADAPTER", "LF_LORA_DEVICE_ERR_SEGMENTS",
    "lf_lora_adapter_t", "lf_lora_batch_t",
]


def strerror(status: int) -> str:
    return lf_lora_strerror(status).decode()


def _bad(message: str) -> LoraflipError:
    return InvalidArgument(LF_E_INVALID_ARGUMENT, message)


# ---- helpers ----
def scale(alpha: float, rank: int, rslora: bool = False) -> float:
    """The adapter scale for lora_alpha = alpha: alpha / rank, or alpha / sqrt(rank) (rsLoRA),
    as the library computes it (correctly rounded to float32)."""
    out = ctypes.c_float()
    kind = LF_LORA_SCALE_RSLORA if rslora else LF_LORA_SCALE_STANDARD
    rc = lf_lora_scale(float(alpha), int(rank), kind, ctypes.byref(out))
    if rc != LF_OK:
        raise error_for(rc, f"lf_lora_scale(alpha={alpha!r}, rank={rank!r}): needs rank >= 1 and a "
                        "finite alpha")
    return out.value


def set_threads(n: int) -> None:
    """Threads the CPU functions may use: 0 = all hardware threads (the default), 1 = the
    calling thread only. Results are bit-identical for every count. Process-wide."""
    rc = lf_lora_cpu_set_threads(int(n))
    if rc != LF_OK:
        raise error_for(rc, f"lf_lora_cpu_set_threads({n!r}): needs n >= 0")


# ---- array descriptions ----
# The LoRA subset of the package's one dtype table (_dtypes.py).
_DTYPE_NAMES = {n: c for n, c in _dtypes.BY_NAME.items() if c in _dtypes.LORA}
_NAME_OF = {c: d.name for c, d in _dtypes.LORA.items()}
_ITEMSIZE = {c: d.itemsize for c, d in _dtypes.LORA.items()}
# __cuda_array_interface__ typestr -> LF_DTYPE_*; 16-bit integers are bf16 bits only on request
_TYPESTR_CODES = {**{d.typestr: c for c, d in _dtypes.LORA.items()}, "<u2": "u16", "<i2": "u16"}


class _Arr:
    """What the library needs of one array: address, element type, shape and strides in
    elements, and where it lives. `obj` keeps the array alive for the duration of the call."""

    __slots__ = ("obj", "ptr", "dtype", "shape", "strides", "device", "writeable", "what")

    def __init__(self, obj, ptr, dtype, shape, strides, device, writeable, what):
        self.obj = obj
        self.ptr = ptr
        self.dtype = dtype        # LF_DTYPE_*, or "u16" (bits of a bf16 array) / "other"
        self.shape = shape
        self.strides = strides    # in elements
        self.device = device      # "cpu" or ("cuda", ordinal)
        self.writeable = writeable
        self.what = what


def _is_torch(x) -> bool:
    return type(x).__module__.split(".", 1)[0] == "torch"


def _np_dtype_code(d: np.dtype):
    if d.byteorder == ">":
        return "other"
    if d == np.float32:
        return LF_DTYPE_F32
    if d == np.float16:
        return LF_DTYPE_F16
    if d.name == "bfloat16":  # ml_dtypes.bfloat16
        return LF_DTYPE_BF16
    if d == np.uint16 or d == np.int16:
        return "u16"
    return "other"


def _describe(x, what: str) -> _Arr:
    if isinstance(x, np.ndarray):
        if isinstance(x, PinnedArray) and x.released:
            raise ReleasedError(f"{what} is a view of a released loraflip version; its memory "
                                "may now hold another version")
        item = x.dtype.itemsize
        if any(s % item for s in x.strides):
            raise _bad(f"{what}: strides {x.strides} are not multiples of the element size")
        ptr = x.__array_interface__["data"][0]  # no copy, no guard; the guard was checked above
        return _Arr(x, ptr, _np_dtype_code(x.dtype), tuple(x.shape),
                    tuple(s // item for s in x.strides), "cpu", bool(x.flags.writeable), what)
    if _is_torch(x):
        import torch
        codes = {**{getattr(torch, d.long_name): c for c, d in _dtypes.LORA.items()},
                 torch.int16: "u16"}
        if x.is_conj() or x.is_neg():
            raise _bad(f"{what}: a torch tensor with a lazy conjugate/negative bit; call "
                       ".resolve_conj()/.resolve_neg() first")
        dev = "cpu" if x.device.type == "cpu" else \
            (("cuda", x.device.index if x.device.index is not None else
              torch.cuda.current_device()) if x.device.type == "cuda" else x.device.type)
        return _Arr(x, x.data_ptr(), codes.get(x.dtype, "other"), tuple(x.shape),
                    tuple(x.stride()), dev, True, what)
    if isinstance(x, Tensor):  # Version.tensor(name): host or device, bf16 included
        code = _DTYPE_NAMES.get(x.dtype, "other")
        ptr = x.data_ptr  # checks that the version is still pinned
        return _Arr(x, ptr, code, tuple(x.shape), _dense_strides(x.shape),
                    "cpu" if x.device < 0 else ("cuda", x.device), False, what)
    cai = getattr(x, "__cuda_array_interface__", None)
    if cai is not None:  # CuPy, Numba, ...: device unknown (None) until compared with the rest
        typestr = cai["typestr"]
        code = _TYPESTR_CODES.get(typestr, "other")
        item = int(typestr[2:]) if typestr[2:].isdigit() else 1
        shape = tuple(int(s) for s in cai["shape"])
        strides = _dense_strides(shape) if cai.get("strides") is None else \
            tuple(int(s) // item for s in cai["strides"])
        ptr, readonly = cai["data"]
        return _Arr(x, int(ptr or 0), code, shape, strides, ("cuda", None), not readonly, what)
    raise TypeError(f"{what}: expected a numpy array, a loraflip view or Tensor, or a torch "
                    f"tensor, got {type(x).__name__} (wrap lists with np.asarray first)")


def _dense_strides(shape) -> tuple:
    strides, acc = [], 1
    for s in reversed(shape):
        strides.append(acc)
        acc *= s
    return tuple(reversed(strides))


def _one_device(arrs: Sequence[_Arr]):
    """The device every array is on; ("cuda", None) (ordinal unknown) matches any CUDA one."""
    known = {a.device for a in arrs if a.device != ("cuda", None)}
    if any(a.device == ("cuda", None) for a in arrs):
        if any(d == "cpu" or d[0] != "cuda" for d in known):
            known.add(("cuda", None))
        elif not known:
            import torch
            known.add(("cuda", torch.cuda.current_device()))
    if len(known) != 1:
        raise _bad("x, y, v and every A and B must be on one device, got "
                   + ", ".join(sorted(map(str, known))))
    return known.pop()


def _resolve_dtype(arrs: Sequence[_Arr], dtype) -> int:
    """The batch dtype: from `dtype` if given, else from the first array; every array must
    match (uint16/int16 bit patterns count as bf16 only with dtype='bf16'). `dtype` may also be
    an LF_DTYPE_* code, such as a pinned view's."""
    if isinstance(dtype, (int, np.integer)) and not isinstance(dtype, bool):
        if int(dtype) not in _dtypes.LORA:
            raise _bad(f"dtype {int(dtype)} ({_lib.lf_dtype_name(int(dtype)).decode()}): "
                       "expected LF_DTYPE_F32, LF_DTYPE_F16 or LF_DTYPE_BF16")
        want = int(dtype)
    elif dtype is not None:
        key = str(dtype).replace("torch.", "")
        if key not in _DTYPE_NAMES:
            raise _bad(f"dtype {dtype!r}: expected one of 'f32', 'f16', 'bf16'")
        want = _DTYPE_NAMES[key]
    else:
        want = arrs[0].dtype
        if want == "u16":
            raise _bad(f"{arrs[0].what} holds 16-bit integers: pass dtype='bf16' if they are "
                       "bf16 bit patterns")
        if want == "other":
            raise _bad(f"{arrs[0].what}: unsupported dtype (float32, float16, bf16)")
    for a in arrs:
        ok = a.dtype == want or (a.dtype == "u16" and want == LF_DTYPE_BF16)
        if not ok:
            got = a.dtype if isinstance(a.dtype, str) else _NAME_OF[a.dtype]
            raise _bad(f"{a.what} is {got} but the call works on {_NAME_OF[want]} "
                       "(one dtype for x, y, every A and every B)")
    return want


def _rows(a: _Arr) -> tuple[int, int, int]:
    """(n_rows, h, row stride) of an array whose last axis is the hidden axis and whose leading
    axes collapse into one row axis."""
    if len(a.shape) == 0:
        raise _bad(f"{a.what} is a scalar; expected [n_rows, hidden]")
    h = a.shape[-1]
    n = 1
    for s in a.shape[:-1]:
        n *= s
    if n == 0 or h == 0:
        return n, h, h
    if h > 1 and a.strides[-1] != 1:
        raise _bad(f"{a.what}: the hidden (last) axis must be contiguous, stride {a.strides[-1]}")
    if n == 1:
        return n, h, h
    # Leading axes of size > 1 must be evenly spaced, the innermost giving the row stride.
    lead = [(s, st) for s, st in zip(a.shape[:-1], a.strides[:-1]) if s != 1]
    ld = lead[-1][1]
    expect = ld
    for s, st in reversed(lead):
        if st != expect:
            raise _bad(f"{a.what}: leading axes of shape {a.shape} with strides {a.strides} do "
                       "not collapse into one row axis; make it contiguous")
        expect = st * s
    if ld < h:
        raise _bad(f"{a.what}: row stride {ld} is smaller than the hidden size {h}")
    return n, h, ld


def _dense_2d(a: _Arr) -> None:
    if len(a.shape) != 2:
        raise _bad(f"{a.what}: expected a 2-D tensor, got shape {a.shape}")
    r, c = a.shape
    if r == 0 or c == 0:
        return
    if (c > 1 and a.strides[1] != 1) or (r > 1 and a.strides[0] != c):
        raise _bad(f"{a.what}: must be dense row-major (C-contiguous), strides {a.strides}")


def _as_index(arr, what: str, n: int) -> np.ndarray:
    a = np.asarray(arr)
    if a.ndim != 1 or a.shape[0] != n:
        raise _bad(f"{what}: expected {n} entries, got shape {a.shape}")
    if a.size and not np.issubdtype(a.dtype, np.integer):
        raise _bad(f"{what}: expected integers, got {a.dtype}")
    if a.size and (a.min() < -2**31 or a.max() >= 2**31):
        raise _bad(f"{what}: values outside int32")
    return np.ascontiguousarray(a, dtype=np.int32)


class _Batch:
    """A filled lf_lora_batch_t plus everything it points to (kept alive here)."""

    def __init__(self):
        self.c = lf_lora_batch_t()
        self.keep: list = []
        self.ranks: list[int] = []
        self.used: np.ndarray = np.zeros(0, np.int32)
        self.offsets: Optional[np.ndarray] = None
        self.adapter_idx: Optional[np.ndarray] = None


def _build(adapters, scales, indices, segments, n_rows: int, h_in: Optional[int],
           h_out: Optional[int], dtype_arrs: list[_Arr], dtype, max_rank: Optional[int]):
    """Describes adapters and indices, checks what only Python can see (the shapes of A and B
    against each other and against x/y/v, dtypes, layouts), and fills the batch."""
    if isinstance(adapters, tuple) and len(adapters) in (2, 3) and not isinstance(
            adapters[0], (tuple, list)):
        raise TypeError("adapters: expected a list of (A, B, scale) tuples, got one tuple; "
                        "wrap it in a list")
    adapters = list(adapters)
    if scales is not None:
        scales = list(scales)
        if len(scales) != len(adapters):
            raise _bad(f"scales: {len(scales)} values for {len(adapters)} adapters")
    descs = []
    for i, entry in enumerate(adapters):
        if not isinstance(entry, (tuple, list)) or len(entry) not in (2, 3):
            raise TypeError(f"adapters[{i}]: expected (A, B, scale) or (A, B), got "
                            f"{type(entry).__name__}")
        A = _describe(entry[0], f"adapters[{i}] A")
        B = _describe(entry[1], f"adapters[{i}] B")
        if len(entry) == 3 and scales is not None:
            raise _bad(f"adapters[{i}] has its own scale and scales= gives another")
        s = entry[2] if len(entry) == 3 else (scales[i] if scales is not None else None)
        if s is None:
            raise _bad(f"adapters[{i}]: no scale; give (A, B, scale) or scales= "
                       "(lora.scale(alpha, rank) computes the PEFT one)")
        _dense_2d(A)
        _dense_2d(B)
        rank = A.shape[0]
        if B.shape[1] != rank:
            raise _bad(f"adapters[{i}]: rank mismatch: A is {A.shape} (rank {rank}) but B is "
                       f"{B.shape} (rank {B.shape[1]}); expected A [rank, h_in], B [h_out, rank]")
        if h_in is None:
            h_in = A.shape[1]
        elif A.shape[1] != h_in:
            raise _bad(f"adapters[{i}]: A is {A.shape} but the input hidden size is {h_in}")
        if h_out is None:
            h_out = B.shape[0]
        elif B.shape[0] != h_out:
            raise _bad(f"adapters[{i}]: B is {B.shape} but the output hidden size is {h_out}")
        descs.append((A, B, float(s)))
        dtype_arrs += [A, B]
    if not dtype_arrs:
        raise _bad("nothing to infer the dtype from")
    code = _resolve_dtype(dtype_arrs, dtype)
    device = _one_device(dtype_arrs)

    b = _Batch()
    table = (lf_lora_adapter_t * max(1, len(descs)))()
    for i, (A, B, s) in enumerate(descs):
        table[i] = lf_lora_adapter_t(A.ptr, B.ptr, A.shape[0], code, s, 0)
        b.ranks.append(A.shape[0])
        b.keep += [A.obj, B.obj]
    n_ad = len(descs)

    c = b.c
    c.dtype = code
    c.n_rows = n_rows if n_rows < 2**31 else -1   # the library rejects it with the rest
    c.h_in = h_in if h_in is not None else 0
    c.h_out = h_out if h_out is not None else 0
    c.n_adapters = n_ad

    if segments is not None:
        offsets = _as_index(segments, "segments (offsets)", len(np.asarray(segments)))
        if offsets.shape[0] < 1:
            raise _bad("segments: expected n_segments + 1 offsets (at least [0, n_rows])")
        n_seg = offsets.shape[0] - 1
        if indices is None:
            if n_ad != 1:
                raise _bad("segments without indices: give the adapter of each segment "
                           "(indices=[...], one per segment)")
            seg_ad = np.zeros(n_seg, np.int32)
        else:
            seg_ad = _as_index(indices, "indices (one adapter per segment)", n_seg)
        c.select = LF_LORA_SELECT_SEGMENTS
        c.n_segments = n_seg
        b.offsets, b.adapter_idx = offsets, seg_ad
        b.used = seg_ad
    elif indices is not None:
        idx = _as_index(indices, "indices (one adapter per row, -1 = none)", n_rows)
        c.select = LF_LORA_SELECT_ROWS
        b.adapter_idx = idx
        b.used = idx
    else:
        if n_ad > 1:
            raise _bad(f"{n_ad} adapters but no indices: give indices= (one per row, or one "
                       "per segment with segments=)")
        c.select = LF_LORA_SELECT_SEGMENTS
        c.n_segments = 1
        b.offsets = np.array([0, n_rows], np.int32)
        b.adapter_idx = np.array([0 if n_ad else LF_LORA_NO_ADAPTER], np.int32)
        b.used = b.adapter_idx

    if max_rank is None:
        used = np.unique(b.used)
        used_ranks = [b.ranks[int(i)] for i in used if 0 <= i < n_ad]
        max_rank = max(used_ranks, default=1)
        max_rank = max(1, min(max_rank, LF_LORA_MAX_RANK))  # a larger used rank: the library
    c.max_rank = max_rank                                   # names it below
    b.table = table
    b.descs = descs
    return b, code, device


def _point_host(b: _Batch) -> None:
    c = b.c
    c.adapters = ctypes.addressof(b.table)
    if c.select == LF_LORA_SELECT_ROWS:
        c.row_adapter = b.adapter_idx.ctypes.data
    else:
        c.seg_offsets = b.offsets.ctypes.data
        c.seg_adapter = b.adapter_idx.ctypes.data


def _diagnose(b: _Batch, extra: Sequence[str] = ()) -> str:
    """Why the library refused the batch, worked out in Python after the fact (the library
    returns a status only)."""
    c = b.c
    p = list(extra)
    m = LF_LORA_HIDDEN_MULTIPLE
    if c.n_rows < 0:
        p.append("n_rows does not fit in int32")
    if c.h_in % m or c.h_in <= 0:
        p.append(f"h_in = {c.h_in} is not a positive multiple of {m}")
    if c.h_out % m or c.h_out <= 0:
        p.append(f"h_out = {c.h_out} is not a positive multiple of {m}")
    for name, ld, h in (("x", c.ldx, c.h_in), ("y", c.ldy, c.h_out)):
        if ld and (ld % m or ld < h):
            p.append(f"row stride of {name} = {ld} is not a multiple of {m} (or < {h})")
    if not 1 <= c.max_rank <= LF_LORA_MAX_RANK:
        p.append(f"max_rank = {c.max_rank} is outside 1..{LF_LORA_MAX_RANK}")
    n_ad = c.n_adapters
    bad_idx = sorted({int(i) for i in b.used if i < -1 or i >= n_ad})
    if bad_idx:
        p.append(f"adapter indices {bad_idx[:8]} are outside [-1, {n_ad})")
    for i in sorted({int(i) for i in b.used if 0 <= i < n_ad}):
        r = b.ranks[i]
        if not 1 <= r <= c.max_rank:
            p.append(f"adapters[{i}] has rank {r}, outside 1..{min(c.max_rank, LF_LORA_MAX_RANK)}")
    if b.offsets is not None:
        o = b.offsets
        if o[0] != 0 or o[-1] != c.n_rows or np.any(np.diff(o) < 0):
            p.append(f"segment offsets {o.tolist()[:12]} do not run from 0 to n_rows = "
                     f"{c.n_rows} without decreasing")
    return "; ".join(p) if p else "the library refused the arguments"


def _check_rc(rc: int, fn: str, b: _Batch, extra: Sequence[str] = ()) -> None:
    if rc != LF_OK:
        raise _lora_lib.call_failed(rc, fn, lambda: _diagnose(b, extra))


# ---- CUDA (torch) ----
def _cuda_run(kind: str, b: _Batch, device, ptr_in: int, ptr_out: int, keep_alive,
              device_error, check: bool):
    """Copies the table and index arrays to the device, launches on torch's current stream of
    `device`, and (check=True) reads the device error word back, which synchronizes."""
    import torch
    dev = torch.device("cuda", device[1])
    c = b.c
    with torch.cuda.device(dev):
        stream = torch.cuda.current_stream(dev).cuda_stream
        raw = ctypes.string_at(ctypes.addressof(b.table), ctypes.sizeof(b.table))
        d_table = torch.frombuffer(bytearray(raw), dtype=torch.uint8).to(dev)
        c.adapters = d_table.data_ptr()
        held = [d_table]
        if c.select == LF_LORA_SELECT_ROWS:
            d_idx = torch.from_numpy(b.adapter_idx).to(dev)
            c.row_adapter = d_idx.data_ptr()
            held.append(d_idx)
        else:
            d_off = torch.from_numpy(b.offsets).to(dev)
            d_seg = torch.from_numpy(b.adapter_idx).to(dev)
            c.seg_offsets, c.seg_adapter = d_off.data_ptr(), d_seg.data_ptr()
            held += [d_off, d_seg]
        err = device_error
        if err is None and check:
            err = torch.zeros(1, dtype=torch.int32, device=dev)
        err_ptr = err.data_ptr() if err is not None else None
        if kind == "apply":
            nbytes = ctypes.c_size_t(0)
            rc = lf_lora_cuda_apply(ctypes.byref(c), None, None, None, ctypes.byref(nbytes),
                                    None, stream)
            _check_rc(rc, "lf_lora_cuda_apply (size query)", b)
            ws = torch.empty(max(16, nbytes.value), dtype=torch.uint8, device=dev)
            nbytes = ctypes.c_size_t(ws.numel())
            rc = lf_lora_cuda_apply(ctypes.byref(c), ptr_in, ptr_out, ws.data_ptr(),
                                    ctypes.byref(nbytes), err_ptr, stream)
            held.append(ws)
            _check_rc(rc, "lf_lora_cuda_apply", b, _align_notes(ptr_in, ptr_out))
        elif kind == "shrink":
            rc = lf_lora_cuda_shrink(ctypes.byref(c), ptr_in, ptr_out, err_ptr, stream)
            _check_rc(rc, "lf_lora_cuda_shrink", b, _align_notes(ptr_in, ptr_out))
        else:
            rc = lf_lora_cuda_expand(ctypes.byref(c), ptr_in, ptr_out, err_ptr, stream)
            _check_rc(rc, "lf_lora_cuda_expand", b, _align_notes(ptr_in, ptr_out))
        # The temporaries in `held` are freed when this returns; torch's caching allocator
        # reuses their memory only for work queued later on the same stream, so that is safe.
        if check and device_error is None:
            bits = int(err.item())  # synchronizes with the stream
            if bits:
                names = [n for bit, n in ((LF_LORA_DEVICE_ERR_INDEX, "adapter index out of range"),
                                          (LF_LORA_DEVICE_ERR_ADAPTER, "bad adapter table entry"),
                                          (LF_LORA_DEVICE_ERR_SEGMENTS, "bad segment offsets"))
                         if bits & bit]
                raise _bad(f"lf_lora_cuda_{kind}: the kernels skipped rows: " + ", ".join(names)
                           + f" ({_diagnose(b)}); the other rows were updated")
    del keep_alive


def _align_notes(*ptrs) -> list[str]:
    return [f"pointer {p:#x} is not 16-byte aligned" for p in ptrs if p and p % 16]


# ---- the array API ----
def apply(x, y, adapters, indices=None, segments=None, *, scales=None, dtype=None,
          device_error=None, check: bool = True):
    """y[i] += scale_a * B_a (A_a x[i]) for every row i with an adapter a; returns y.

    x: [..., h_in], y: [..., h_out] (leading axes are rows; the last axis must be contiguous,
       rows evenly spaced, strides multiples of 8 elements). y is updated in place.
    adapters: list of (A, B, scale) or (A, B) with scales=[...]; A [rank, h_in] and B
       [h_out, rank] dense row-major, e.g. the lora_A / lora_B views of one layer+module of a
       version pinned with Client.acquire (read in place, nothing copied). Mixed ranks are fine.
    indices: per row, the index into adapters (-1 = leave the row alone); with segments=, per
       segment. None with one adapter: every row uses it.
    segments: n_segments + 1 row offsets (0 = first <= ... <= last = n_rows; empty segments are
       fine); rows o[s] .. o[s+1]-1 use adapter indices[s].
    dtype: None (from the arrays) or 'f32' / 'f16' / 'bf16'; 'bf16' lets uint16 arrays carry bf16
       bit patterns (numpy has no bf16 unless ml_dtypes is installed).
    CUDA torch tensors run on torch.cuda.current_stream(); check=True reads the kernels' error
    word back afterwards (a synchronization); device_error: your own zeroed int32 CUDA tensor to
    OR the LF_LORA_DEVICE_ERR_* bits into instead (then nothing is read back).
    """
    X = _describe(x, "x")
    Y = _describe(y, "y")
    if not Y.writeable:
        raise _bad("y is read-only; it is updated in place")
    nx, h_in, ldx = _rows(X)
    ny, h_out, ldy = _rows(Y)
    if nx != ny:
        raise _bad(f"x has {nx} rows ({X.shape}) but y has {ny} ({Y.shape})")
    b, code, device = _build(adapters, scales, indices, segments, nx, h_in, h_out, [X, Y],
                             dtype, None)
    b.c.ldx, b.c.ldy = ldx, ldy
    if device == "cpu":
        _point_host(b)
        rc = lf_lora_apply(ctypes.byref(b.c), X.ptr, Y.ptr)
        _check_rc(rc, "lf_lora_apply", b)
    elif isinstance(device, tuple) and device[0] == "cuda":
        _cuda_run("apply", b, device, X.ptr, Y.ptr, (X, Y), device_error, check)
    else:
        raise _bad(f"arrays on device {device!r}: CPU and CUDA only")
    return y


def shrink(x, adapters, indices=None, segments=None, *, v=None, scales=None, dtype=None,
           device_error=None, check: bool = True):
    """v[i, 0:r] = A_a x[i] for every row i with an adapter a of rank r; returns v.

    v: None (a new zeroed float32 [n_rows, max_rank] array on x's device, max_rank the largest
    rank used) or a dense float32 [n_rows, max_rank] array; other parts of v are left as they
    are. Arguments otherwise as for apply (a scale is not needed here: (A, B) pairs are fine).
    """
    X = _describe(x, "x")
    n, h_in, ldx = _rows(X)
    if scales is None:  # shrink does not use the scale
        adapters = [tuple(e) if len(e) == 3 else (e[0], e[1], 1.0) for e in adapters]
    max_rank = None
    V = None
    if v is not None:
        V = _describe(v, "v")
        _check_v(V, n)
        max_rank = V.shape[1]
    arrs = [X]
    b, code, device = _build(adapters, scales, indices, segments, n, h_in, None, arrs, dtype,
                             max_rank)
    b.c.ldx = ldx
    if V is None:
        v = _new_v(n, b.c.max_rank, device)
        V = _describe(v, "v")
    device = _one_device(arrs + [V])
    if b.c.h_out == 0:  # no adapters: any valid size; nothing is read
        b.c.h_out = LF_LORA_HIDDEN_MULTIPLE
    if device == "cpu":
        _point_host(b)
        rc = lf_lora_shrink(ctypes.byref(b.c), X.ptr, V.ptr)
        _check_rc(rc, "lf_lora_shrink", b)
    else:
        _cuda_run("shrink", b, device, X.ptr, V.ptr, (X, V), device_error, check)
    return v


def expand(v, y, adapters, indices=None, segments=None, *, scales=None, dtype=None,
           device_error=None, check: bool = True):
    """y[i] += scale_a * B_a v[i, 0:r] for every row i with an adapter; returns y.
    v: dense float32 [n_rows, max_rank] (what shrink returned). Arguments as for apply."""
    Y = _describe(y, "y")
    if not Y.writeable:
        raise _bad("y is read-only; it is updated in place")
    n, h_out, ldy = _rows(Y)
    V = _describe(v, "v")
    _check_v(V, n)
    arrs = [Y]
    b, code, device = _build(adapters, scales, indices, segments, n, None, h_out, arrs, dtype,
                             V.shape[1])
    b.c.ldy = ldy
    device = _one_device(arrs + [V])
    if b.c.h_in == 0:
        b.c.h_in = LF_LORA_HIDDEN_MULTIPLE
    if device == "cpu":
        _point_host(b)
        rc = lf_lora_expand(ctypes.byref(b.c), V.ptr, Y.ptr)
        _check_rc(rc, "lf_lora_expand", b)
    else:
        _cuda_run("expand", b, device, V.ptr, Y.ptr, (V, Y), device_error, check)
    return y


def _check_v(V: _Arr, n: int) -> None:
    if V.dtype != LF_DTYPE_F32:
        raise _bad("v must be float32")
    if len(V.shape) != 2 or V.shape[0] != n:
        raise _bad(f"v: expected [{n}, max_rank], got {V.shape}")
    _dense_2d(V)
    if not V.writeable:
        raise _bad("v is read-only")


def _new_v(n: int, max_rank: int, device):
    if device == "cpu":
        return np.zeros((n, max_rank), np.float32)
    import torch
    return torch.zeros((n, max_rank), dtype=torch.float32, device=torch.device("cuda", device[1]))

