"""The Client: control requests, writes and reads of one loraflipd instance."""
from __future__ import annotations

import collections
import contextlib
import ctypes
import json
import logging
import math
import os
import re
import threading
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Iterator, NamedTuple, Optional

import numpy as np

from . import _dlpack
from . import _dtypes
from . import _lib as L
from . import _safetensors as st
from ._errors import (ClosedError, DaemonUnreachable, InvalidArgument, LeaseError,
                      LoraflipError, NoFreeSlot, NotFound, ReleasedError, Stale, Timeout,
                      error_for)
from ._safetensors import RawTensor
from ._views import Guard, PinnedArray, pinned_array

# Views of the package's one dtype table (_dtypes.py): name -> LF_DTYPE_*, and LF_DTYPE_* ->
# numpy dtype (bf16 has none: see _numpy_dtype).
_NAMES = _dtypes.BY_NAME
_NP = _dtypes.NUMPY
_NP_CODES = {nd: code for code, nd in _NP.items()}  # the hot path of publish: one dict lookup
_ADAPTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,126}$")
_NO_FREE_SLOT_RETRY_S = 10.0
# How long publish() keeps asking for the outcome of a commit that went unanswered (the
# daemon restarting under systemd, or slow): a few restarts' worth.
_COMMIT_OUTCOME_RETRY_S = 10.0
_log = logging.getLogger("loraflip")
# The longest single wait in C of a blocking call: the C calls cannot be interrupted, and short
# slices keep Ctrl-C working.
_SLICE_MS = 200


def _slice_ms(deadline: Optional[float]) -> int:
    """The next slice of a wait that ends at `deadline` (time.monotonic(); None: never), in ms.
    Rounded up: a slice rounded down would turn the last part of a wait (or all of a wait
    under 1 ms) into a poll that gives up before the deadline."""
    if deadline is None:
        return _SLICE_MS
    return max(0, min(_SLICE_MS, math.ceil((deadline - time.monotonic()) * 1000)))


def dtype_code(dtype) -> int:
    """LF_DTYPE_* for a name ("f32", "bfloat16", ...), a numpy dtype or a torch dtype."""
    if isinstance(dtype, int):
        return dtype
    s = str(dtype).replace("torch.", "")
    if s in _NAMES:
        return _NAMES[s]
    try:
        d = np.dtype(dtype)
    except TypeError:
        raise InvalidArgument(L.LF_E_INVALID_ARGUMENT, f"unsupported dtype {dtype!r}") from None
    for code, nd in _NP.items():
        if d == nd:
            return code
    raise InvalidArgument(L.LF_E_INVALID_ARGUMENT,
                          f"unsupported dtype {dtype!r} (loraflip: {', '.join(sorted(set(_NAMES)))})")


def dtype_name(code: int) -> str:
    return L.lf_dtype_name(code).decode()


def _numpy_dtype(code: int):
    if code in _NP:
        return _NP[code]
    try:  # bf16 as a numpy dtype, where the optional ml_dtypes package provides one
        import ml_dtypes  # type: ignore[import-not-found]
        return np.dtype(ml_dtypes.bfloat16)
    except ImportError:
        return None


def _b(s: str) -> bytes:
    if not isinstance(s, str):
        raise InvalidArgument(L.LF_E_INVALID_ARGUMENT, f"a name must be a str, not {type(s).__name__}")
    return s.encode()


def _check_adapter_name(name) -> bytes:
    if not isinstance(name, str) or not _ADAPTER_NAME.match(name):
        raise InvalidArgument(L.LF_E_INVALID_ARGUMENT,
                              f"bad adapter name {name!r}: 1-127 of [A-Za-z0-9._:-], starting "
                              "with a letter or digit")
    return name.encode()


# ---- sources: what publish() accepts as a tensor ----

class _Source(NamedTuple):
    dtype: int
    shape: tuple
    address: int
    nbytes: int
    keep: Any  # keeps the memory alive while it is copied
    device: int = -1  # -1: host memory; else the CUDA ordinal of a torch tensor's memory


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "data_ptr")


def _bf16_bits(a: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bit patterns, rounding to nearest even (NaN stays NaN)."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    rounded = ((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16))
    out = rounded.astype(np.uint16)
    nan = np.isnan(a)
    if nan.any():
        out[nan] = 0x7FC0
    return out


def _source(name: str, x, want: Optional[tuple[int, tuple]], cast: bool) -> _Source:
    """Normalizes one tensor; checks it against the slot's (dtype, shape) when known."""
    if type(x) is np.ndarray and x.dtype in _NP_CODES and x.flags.c_contiguous and (
            want is None or (_NP_CODES[x.dtype] == want[0] and x.shape == tuple(want[1]))):
        # The common case, kept cheap: publish runs it for every tensor of every version.
        return _Source(_NP_CODES[x.dtype], x.shape, x.__array_interface__["data"][0], x.nbytes, x)
    if isinstance(x, RawTensor):
        d, shape, keep = x.dtype, x.shape, np.ascontiguousarray(x.data)
        address, nbytes, device = keep.ctypes.data, keep.nbytes, -1
    elif _is_torch(x):
        t = x.detach()
        if t.device.type not in ("cpu", "cuda"):
            t = t.cpu()
        # CUDA tensors stay where they are: Writer._copy copies them device to device into a
        # device-placed slot, or brings them to host memory for a host-placed one.
        d = dtype_code(t.dtype)
        if cast and want is not None and d != want[0] and _dtypes.BY_CODE[want[0]].kind == "f":
            import torch  # present: x is a torch tensor
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
            elif want[0] in _NP and a.dtype.kind == "f" and _NP[want[0]].kind == "f":
                a, d = a.astype(_NP[want[0]]), want[0]
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
    return _Source(d, tuple(shape), address, nbytes, keep, device)


# ---- LoRA config ----

def _jsonable(o):
    if isinstance(o, (set, frozenset)):
        return sorted(o)
    if hasattr(o, "value"):  # enums (PEFT's TaskType)
        return o.value
    return str(o)


def _lora_config(config) -> dict:
    """r, lora_alpha, target_modules, use_rslora and the whole config (for metadata) from a
    dict or a PEFT LoraConfig-like object."""
    if isinstance(config, Mapping):
        full = dict(config)
    elif hasattr(config, "to_dict"):
        full = dict(config.to_dict())
    elif hasattr(config, "__dict__"):
        full = {k: v for k, v in vars(config).items() if not k.startswith("_")}
    else:
        raise InvalidArgument(L.LF_E_INVALID_ARGUMENT,
                              f"config must be a dict or a LoraConfig-like object, not {type(config).__name__}")
    get = (lambda k, d=None: full.get(k, getattr(config, k, d)))
    r = get("r", full.get("rank"))
    if r is None:
        raise InvalidArgument(L.LF_E_INVALID_ARGUMENT, "the LoRA config needs r (the rank)")
    alpha = get("lora_alpha", full.get("alpha", 8))  # 8: PEFT's LoraConfig default
    tm = get("target_modules")
    if tm is None:
        modules = []
    elif isinstance(tm, str):
        modules = [tm]
    else:
        modules = sorted(tm) if isinstance(tm, (set, frozenset)) else list(tm)
    for m in modules:
        if not isinstance(m, str) or "," in m:
            raise InvalidArgument(L.LF_E_INVALID_ARGUMENT, f"bad target module {m!r}")
    try:
        r, alpha = int(r), float(alpha)
    except (TypeError, ValueError):
        raise InvalidArgument(L.LF_E_INVALID_ARGUMENT, f"bad r {r!r} or lora_alpha {alpha!r}") from None
    if r <= 0:
        raise InvalidArgument(L.LF_E_INVALID_ARGUMENT, f"r must be positive, not {r}")
    full.setdefault("peft_type", "LORA")
    full["r"], full["lora_alpha"], full["target_modules"] = r, alpha, modules
    return {"r": r, "lora_alpha": alpha, "target_modules": modules,
            "use_rslora": bool(get("use_rslora", False)),
            "metadata": json.dumps({"peft_config": full}, default=_jsonable)}


# ---- readers: one per thread, as the C API wants ----

class _Reader:
    """One lf_reader_t, used only by the thread that opened it. Pins that end on another thread
    (a DLPack consumer's deleter) are queued and released by the owner at its next call."""

    def __init__(self, runtime_dir: Optional[bytes]):
        h = L.lf_reader_p()
        rc = L.lf_reader_open(runtime_dir, ctypes.byref(h))
        if rc != L.LF_OK:
            raise error_for(rc, L.lf_last_error_message().decode(errors="replace"))
        self.handle = h.value
        self.thread = threading.get_ident()
        self.refs: dict[str, tuple[int, dict]] = {}  # name -> (ref, schema by tensor name)
        self.pending: collections.deque = collections.deque()
        self.live: set = set()  # _Pins not yet released

    def fail(self, rc: int) -> LoraflipError:
        return error_for(rc, L.lf_reader_last_error(self.handle).decode(errors="replace"))

    def drain(self) -> None:
        while self.pending:
            self.pending.popleft()._release_now()

    def lookup(self, name: str, refresh: bool = False) -> tuple[int, dict]:
        if not refresh and name in self.refs:
            return self.refs[name]
        ref = L.lf_adapter_ref_t()
        rc = L.lf_reader_find(self.handle, _b(name), ctypes.byref(ref))
        if rc != L.LF_OK:
            self.refs.pop(name, None)
            raise self.fail(rc)
        entry = (ref.value, {})
        self.refs[name] = entry
        return entry

    def lookup_after_stale(self, name: str) -> tuple[int, dict]:
        """The name looked up again after LF_E_STALE, in case it was created again. If it was
        not, the answer stays the C API's for a reference to a dropped adapter (Stale, as long
        as the old reference is kept), not the NotFound of a name never seen."""
        stale = self.refs.get(name)
        try:
            return self.lookup(name, refresh=True)
        except NotFound:
            if stale is not None:
                self.refs[name] = stale
            raise Stale(L.LF_E_STALE, f"adapter '{name}' was dropped") from None

    def close(self) -> None:
        for p in list(self.live):
            p._mark_released()
        self.live.clear()
        self.pending.clear()
        if self.handle:
            L.lf_reader_close(self.handle)  # clears every pin cell this reader held
            self.handle = None


class _Pin:
    """One pinned version. Ends when its acquire block ends and every DLPack export is gone."""

    def __init__(self, reader: _Reader, handle: int, name: str, version: int, schema: dict):
        self.reader = reader
        self.handle = handle
        self.name = name
        self.version = version
        self.schema = schema
        self.guard = Guard(f"version {version} of '{name}'", export=self._export_array)
        self.exports = 0
        self.block_open = True
        self.after: Optional[tuple] = None  # (device, stream) for lf_pin_release_after
        self.lock = threading.Lock()

    # Export bookkeeping: the pin outlives the block while a DLPack consumer holds memory.
    def _export_array(self, array: np.ndarray, max_version):
        strides = [s // array.itemsize for s in array.strides]
        return self.capsule(array.__array_interface__["data"][0], _dtype_of_np(array.dtype),
                            array.shape, strides, max_version)

    def capsule(self, address, dtype, shape, strides, max_version, device=-1):
        self.guard.check()
        with self.lock:
            self.exports += 1
        try:
            return _dlpack.make_capsule(address, dtype, shape, strides, read_only=True,
                                        versioned=_dlpack.wants_versioned(max_version),
                                        on_release=self._export_done, device=device)
        except BaseException:
            self._export_done()
            raise

    def _export_done(self):
        with self.lock:
            self.exports -= 1
            last = self.exports == 0 and not self.block_open
        if last:
            self._schedule_release()

    def end_block(self):
        with self.lock:
            self.block_open = False
            last = self.exports == 0
        self.guard.alive = False
        if last:
            self._schedule_release()

    def end_block_after(self, device: int, stream: Optional[int]) -> None:
        """end_block, with the pin released only once `stream`'s queued work is done."""
        with self.lock:
            last = self.exports == 0 and self.block_open
        if last and threading.get_ident() == self.reader.thread and self.handle is not None:
            # The usual case, done now so that a refusal reaches the caller with the pin intact.
            rc = L.lf_pin_release_after(self.handle, device, stream)
            if rc != L.LF_OK:
                raise self.reader.fail(rc)
            with self.lock:
                self.block_open = False
            self._mark_released()
            return
        self.after = (device, stream)
        self.end_block()

    def _schedule_release(self):
        if threading.get_ident() == self.reader.thread:
            self._release_now()
        else:
            self.reader.pending.append(self)

    def _release_now(self):
        if self.handle is not None and self.reader.handle:
            if self.after is None:
                L.lf_pin_release(self.handle)
            else:
                rc = L.lf_pin_release_after(self.handle, *self.after)
                if rc != L.LF_OK:
                    # Releasing now could let a writer reuse memory that queued kernels still
                    # read: keep the pin until the reader closes (which waits for the work).
                    warnings.warn("loraflip: keeping a pin until the reader closes: "
                                  + str(self.reader.fail(rc)), RuntimeWarning, stacklevel=2)
                    self.handle = None
                    self.guard.alive = False
                    return
        self._mark_released()

    def _mark_released(self):
        self.handle = None
        self.guard.alive = False
        self.reader.live.discard(self)


def _host_only(tensor: str, device: int, writer: bool = False) -> None:
    """numpy views are for host memory only. A device-placed tensor is GPU memory: on a real
    GPU its address is not readable by the CPU, so it is refused here even where the daemon's
    host stand-in (--device-backend host) would make it readable."""
    if device >= 0:
        how = ("write it with writer.copy_in(name, array_or_tensor) (numpy: a host-to-device "
               "copy; torch CUDA tensors: a device-to-device copy), or torch.from_dlpack("
               "writer.tensor(name))") if writer else (
              "read it through DLPack (torch.from_dlpack(version.tensor(name)), bf16 included) "
              "or version.tensor(name).__cuda_array_interface__")
        raise loraflip_unsupported(f"tensor '{tensor}' lives in GPU memory (cuda:{device}), "
                                   f"which numpy cannot view: {how}")


def loraflip_unsupported(message: str) -> LoraflipError:
    return error_for(L.LF_E_UNSUPPORTED, message)


# LF_DTYPE_* -> __cuda_array_interface__ typestr. bf16 has no typestr of its own: "<V2" is what
# torch's exporter and ml_dtypes write, but most consumers (CuPy, Numba, torch.as_tensor) read
# it as opaque 2-byte records, not as bf16. bf16 goes through DLPack.
_CAI_TYPESTR = _dtypes.TYPESTR


def _device_ordinal(device) -> int:
    """An ordinal from 1, "cuda:1" or torch.device("cuda", 1)."""
    if isinstance(device, bool):
        raise InvalidArgument(L.LF_E_INVALID_ARGUMENT, f"bad device {device!r}")
    if isinstance(device, int):
        return device
    if isinstance(device, str):
        m = re.fullmatch(r"cuda:(\d+)", device.strip())
        if m:
            return int(m.group(1))
    elif getattr(device, "type", None) == "cuda" and getattr(device, "index", None) is not None:
        return int(device.index)
    raise InvalidArgument(L.LF_E_INVALID_ARGUMENT,
                          f"bad device {device!r}: an ordinal (1), 'cuda:1' or torch.device('cuda', 1)")


def _placement(placement) -> bytes:
    if not isinstance(placement, str):
        raise InvalidArgument(L.LF_E_INVALID_ARGUMENT,
                              f"placement must be a str ('host', 'cuda:0', 'cuda:0,1'), not "
                              f"{type(placement).__name__}")
    return placement.encode()


def _dtype_of_np(d: np.dtype) -> int:
    for code, nd in _NP.items():
        if d == nd:
            return code
    if d.name == "bfloat16":
        return L.LF_DTYPE_BF16
    raise TypeError(f"no loraflip dtype for {d}")


class Tensor:
    """One tensor of a pinned version or of an open write: metadata, a numpy view, and DLPack
    export (`torch.from_dlpack(t)`, `numpy.from_dlpack(t)`). Reader exports keep the version
    pinned until the consumer's array is freed; writer exports are valid until commit/abort."""

    __slots__ = ("name", "dtype", "shape", "nbytes", "version", "device", "_address", "_owner",
                 "_writeable")

    def __init__(self, view: L.lf_tensor_view_t, owner, writeable: bool):
        self.name = view.name.decode()
        self.dtype = dtype_name(view.dtype)
        self.shape = tuple(view.shape[i] for i in range(view.ndim))
        self.nbytes = int(view.nbytes)
        self.version = int(view.version)
        self.device = int(view.device)  # -1: host memory, else a CUDA device ordinal
        self._address = view.data or 0
        self._owner = owner
        self._writeable = writeable

    def __repr__(self):
        return f"loraflip.Tensor({self.name!r}, {self.dtype}, {self.shape})"

    @property
    def data_ptr(self) -> int:
        self._owner.guard.check()
        return self._address

    def numpy(self) -> PinnedArray:
        """A zero-copy numpy view (PinnedArray); bf16 needs the optional ml_dtypes package."""
        return self._owner._array_at(self.name, self._address, dtype_code(self.dtype),
                                     self.shape, self.nbytes, self.device)

    def __dlpack__(self, *, stream=None, max_version=None, dl_device=None, copy=None):
        if copy:
            raise BufferError("loraflip exports slot memory without copying (copy=True refused)")
        if dl_device is not None and tuple(dl_device) != self.__dlpack_device__():
            raise BufferError(f"{self.name} lives on {self.__dlpack_device__()}, not {dl_device}")
        return self._owner.capsule(self._address, dtype_code(self.dtype), self.shape, None,
                                   max_version, device=self.device)

    def __dlpack_device__(self):
        return (_dlpack.kDLCUDA, self.device) if self.device >= 0 else (_dlpack.kDLCPU, 0)

    @property
    def __cuda_array_interface__(self) -> dict:
        """CUDA Array Interface v3 of a device-placed tensor (CuPy, Numba, torch.as_tensor).
        Unlike a DLPack export, it does not keep the version pinned: use it only inside the
        acquire block (or the open write). bf16 gets typestr "<V2", which most consumers do not
        read as bf16: use DLPack for bf16. Host tensors have no such attribute."""
        if self.device < 0:
            # AttributeError, so that hasattr() is False for host memory (as torch does).
            raise AttributeError(f"tensor '{self.name}' is in host memory: use numpy() or "
                                 "DLPack, not __cuda_array_interface__")
        self._owner.guard.check()
        return {"shape": self.shape, "typestr": _CAI_TYPESTR[dtype_code(self.dtype)],
                "data": (self._address if self.nbytes else 0, not self._writeable),
                "strides": None, "version": 3}


class Version(Mapping):
    """A pinned version of an adapter, yielded by `Client.acquire`. A read-only mapping of
    tensor name -> numpy view; the views stop working when the block ends."""

    def __init__(self, pin: _Pin):
        self._pin = pin
        self.name = pin.name
        self.version = pin.version
        self._arrays: dict[str, PinnedArray] = {}

    # Mapping
    def __getitem__(self, tensor: str) -> PinnedArray:
        a = self._arrays.get(tensor)
        if a is not None:
            self._pin.guard.check()
            return a
        return self.array(tensor)

    def __iter__(self):
        return iter(self._pin.schema)

    def __len__(self):
        return len(self._pin.schema)

    def __contains__(self, tensor):
        return tensor in self._pin.schema

    def __repr__(self):
        state = "released" if self.released else "pinned"
        return f"<loraflip.Version {self.version} of '{self.name}', {len(self)} tensors, {state}>"

    @property
    def released(self) -> bool:
        return not self._pin.guard.alive

    def _view(self, tensor: str, device=None) -> L.lf_tensor_view_t:
        self._pin.guard.check()
        entry = self._pin.schema.get(tensor) if isinstance(tensor, str) else None
        if entry is None:
            raise NotFound(L.LF_E_NOT_FOUND, f"adapter '{self.name}' has no tensor {tensor!r}")
        v = L.lf_tensor_view_t()
        if device is None:
            rc = L.lf_pin_tensor(self._pin.handle, entry, ctypes.byref(v))
        else:
            ordinal = _device_ordinal(device)
            rc = L.lf_pin_tensor_on_device(self._pin.handle, entry, ordinal, ctypes.byref(v))
            if rc == L.LF_E_NOT_FOUND:
                raise NotFound(rc, f"version {self.version} of '{self.name}' has no copy on "
                                   f"cuda:{ordinal} (see its placement in info())")
        if rc != L.LF_OK:
            raise error_for(rc, f"tensor {tensor!r} of version {self.version} of '{self.name}'")
        return v

    @property
    def device(self) -> int:
        """-1 for a host-placed adapter, else the CUDA ordinal of its first device (the copy
        that indexing and tensor(name) give; tensor(name, device=n) gives another)."""
        for t in self._pin.schema:
            return int(self._view(t).device)
        return -1

    def array(self, tensor: str) -> PinnedArray:
        """Read-only zero-copy numpy view of one tensor. bf16 needs ml_dtypes (else use
        `tensor(name)` with torch.from_dlpack, or `bits(name)`)."""
        v = self._view(tensor)
        a = self._array_at(tensor, v.data, v.dtype, tuple(v.shape[i] for i in range(v.ndim)),
                           v.nbytes, v.device)
        self._arrays[tensor] = a
        return a

    def bits(self, tensor: str) -> PinnedArray:
        """The raw elements as unsigned integers of the same width (bf16 -> uint16)."""
        v = self._view(tensor)
        _host_only(tensor, v.device)
        size = L.lf_dtype_size(v.dtype)
        dt = np.dtype({1: "u1", 2: "<u2", 4: "<u4", 8: "<u8"}[size])
        return pinned_array(v.data or 0, v.nbytes, dt, tuple(v.shape[i] for i in range(v.ndim)),
                            self._pin.guard, writeable=False)

    def _array_at(self, tensor, address, dtype, shape, nbytes, device=-1) -> PinnedArray:
        self._pin.guard.check()
        _host_only(tensor, device)
        nd = _numpy_dtype(dtype)
        if nd is None:
            raise TypeError(f"tensor '{tensor}' is bf16, which numpy cannot hold: use "
                            "torch.from_dlpack(version.tensor(name)), version.bits(name) for the "
                            "uint16 patterns, or install ml_dtypes")
        return pinned_array(address or 0, nbytes, nd, shape, self._pin.guard, writeable=False)

    def capsule(self, address, dtype, shape, strides, max_version, device=-1):
        return self._pin.capsule(address, dtype, shape, strides, max_version, device)

    @property
    def guard(self) -> Guard:
        return self._pin.guard

    def tensor(self, tensor: str, device=None) -> Tensor:
        """The tensor's metadata and DLPack export (torch.from_dlpack works, bf16 included).
        For a device-placed adapter, `device` (an ordinal, "cuda:1" or a torch.device) picks
        the copy on that GPU (a tensor-parallel rank reads its own; all copies hold the same
        version); None: the adapter's first device. Device tensors also expose
        __cuda_array_interface__."""
        return Tensor(self._view(tensor, device), self, writeable=False)

    def copy(self) -> dict[str, np.ndarray]:
        """Copies of every tensor (bf16 as uint16 patterns unless ml_dtypes is installed)."""
        out = {}
        for t in self._pin.schema:
            v = self._view(t)
            nd = _numpy_dtype(v.dtype)
            a = self.bits(t) if nd is None else self.array(t)
            out[t] = a.copy()
        return out

    def release(self) -> None:
        """Ends the pin (also done by the end of the `with` block). Idempotent."""
        self._pin.end_block()

    def release_after(self, stream=None, device: Optional[int] = None) -> None:
        """Ends the pin once the GPU work queued so far on `stream` is done, without waiting:
        queue a generation step's kernels on the pinned tensors, call this, move on; the pin
        keeps covering the kernels. `stream`: a torch.cuda.Stream (or anything with
        `cuda_stream`), a raw cudaStream_t as an int, or None for the default stream.
        `device`: the stream's device; by default the torch stream's, else the version's own
        (a version in host memory read by GPU kernels must name it). Ends the block like
        release(); DLPack exports still alive keep the pin until they go, then the same rule
        applies. The pin is let go at a later acquire on this thread once the work is done."""
        handle = getattr(stream, "cuda_stream", stream)
        if handle is not None and not isinstance(handle, int):
            raise InvalidArgument(L.LF_E_INVALID_ARGUMENT,
                                  f"stream must be a CUDA stream, an int or None, not {type(stream).__name__}")
        if device is None:
            stream_device = getattr(getattr(stream, "device", None), "index", None)
            device = -1 if stream_device is None else int(stream_device)
        if self._pin.handle is None:
            return  # released already: nothing left to cover
        self._pin.end_block_after(int(device), handle or None)


class _Acquire:
    """The context manager returned by Client.acquire."""

    __slots__ = ("_client", "_name", "_min", "_exact", "_version")

    def __init__(self, client, name, min_version, exact):
        self._client, self._name, self._min, self._exact = client, name, min_version, exact
        self._version = None

    def __enter__(self) -> Version:
        self._version = self._client._pin(self._name, self._min, self._exact)
        return self._version

    def __exit__(self, *exc):
        self._version.release()
        return False


_EVENT_KINDS = {L.LF_EVENT_COMMIT: "commit", L.LF_EVENT_ROLLBACK: "rollback", L.LF_EVENT_DROP: "drop"}


class FlipEvent(NamedTuple):
    """One flip of an adapter's active version, as the daemon announced it."""
    adapter: str
    version: int          # the active version after the flip (0 after a drop)
    kind: str = "commit"  # "commit", "rollback" or "drop"
    previous: int = 0     # the active version before it
    unix_ns: int = 0      # when the daemon sent it
    seq: int = 0          # this adapter's event number, from 1
    missed: int = 0       # this adapter's events dropped for this watcher since its last one
    # (known only at the adapter's next event: see Watcher for how to tell sooner)


class Watcher:
    """Flip events of one adapter (or all), from the daemon's PUB socket. Subscribed from the
    moment it is created; iterate it, and close it (or use `with`).

    The socket drops events for a watcher that falls behind; `FlipEvent.missed` counts them,
    but only at the adapter's next event. A watcher that drains a burst whose last events were
    dropped (a "drop" event included) learns nothing until the adapter flips again. To know
    whether it is behind now, compare the version of the last event with the active version:
    `client.active_version(name) != last.version` (or loraflip.Stale / NotFound: the adapter
    was dropped) means events were lost, or the last one is still on its way (it is sent just
    after the flip); `client.info(name)` catches up."""

    def __init__(self, runtime_dir: Optional[bytes], name: Optional[str], timeout: Optional[float]):
        if name is not None:
            _check_adapter_name(name)
        h = L.lf_events_p()
        rc = L.lf_events_open(runtime_dir, name.encode() if name else None, ctypes.byref(h))
        if rc != L.LF_OK:
            raise error_for(rc, L.lf_last_error_message().decode(errors="replace"))
        self._handle = h.value
        self._timeout = timeout

    def next(self, timeout: Optional[float] = None) -> Optional[FlipEvent]:
        """The next flip, or None if none came within `timeout` seconds (None: forever)."""
        if self._handle is None:
            raise ClosedError("the watcher is closed")
        deadline = None if timeout is None else time.monotonic() + timeout
        e = L.lf_event_t()
        while True:
            rc = L.lf_events_next_event(self._handle, _slice_ms(deadline), ctypes.byref(e))
            if rc == L.LF_OK:
                return FlipEvent(e.adapter.decode(), e.version, _EVENT_KINDS.get(e.kind, "unknown"),
                                 e.previous, e.unix_ns, e.seq, e.missed)
            if rc != L.LF_E_TIMEOUT:
                raise error_for(rc, "reading flip events failed")
            if deadline is not None and time.monotonic() >= deadline:
                return None

    def __iter__(self) -> Iterator[FlipEvent]:
        while True:
            e = self.next(self._timeout)
            if e is None:
                return
            yield e

    def close(self) -> None:
        if self._handle is not None:
            L.lf_events_close(self._handle)
            self._handle = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


class Writer:
    """One write in progress (Client.write): a slot lent by the daemon. Index it by tensor name
    for writable numpy views, or `copy_in`; leave the `with` block to commit (an exception
    aborts). Belongs to one thread; valid until commit or abort."""

    def __init__(self, client: "Client", name: str, lease_ms: int, check_finite: bool,
                 checksum: bool, retry_s: float):
        self._client = client
        self.name = name
        self._flags = (L.LF_COMMIT_CHECK_FINITE if check_finite else 0) | \
                      (L.LF_COMMIT_CHECKSUM if checksum else 0)
        h = L.lf_writer_p()
        deadline = time.monotonic() + retry_s
        with client._use() as handle:
            while True:
                rc = L.lf_client_begin_write(handle, _b(name), int(lease_ms), ctypes.byref(h))
                if rc != L.LF_E_NO_FREE_SLOT or time.monotonic() >= deadline:
                    break
                time.sleep(0.001)  # readers pin every slot right now: they release within a step
            if rc != L.LF_OK:
                raise client._fail(rc)
        self._handle = h.value
        self.guard = Guard(f"the write of '{name}'")
        self.version: Optional[int] = None
        self.tensor_count = L.lf_writer_tensor_count(self._handle)
        self._views: Optional[dict[str, tuple[int, L.lf_tensor_view_t]]] = None
        # -1: the slot is host memory; else the CUDA ordinal of the device written to.
        first = L.lf_tensor_view_t()
        self.device = (int(first.device) if self.tensor_count and
                       L.lf_writer_tensor(self._handle, 0, ctypes.byref(first)) == L.LF_OK else -1)
        # Asynchronous device copies in flight: their sources stay alive, and their streams
        # are waited for before an abort gives the slot back, until the write ends.
        self._keep: list = []
        self._streams: dict = {}
        client._writers.add(self)

    @property
    def _schema(self) -> dict:
        """name -> (index, view), read from the slot on first use."""
        if self._views is None:
            self._check()
            views = {}
            for i in range(self.tensor_count):
                v = L.lf_tensor_view_t()
                L.lf_writer_tensor(self._handle, i, ctypes.byref(v))
                views[v.name.decode()] = (i, v)
            self._views = views
        return self._views

    def _check(self):
        if self._handle is None:
            raise ReleasedError(f"the write of '{self.name}' has ended (committed or aborted)")

    def names(self) -> list[str]:
        return list(self._schema)

    def __contains__(self, tensor):
        return tensor in self._schema

    def _entry(self, tensor: str):
        self._check()
        e = self._schema.get(tensor) if isinstance(tensor, str) else None
        if e is None:
            raise NotFound(L.LF_E_NOT_FOUND, f"adapter '{self.name}' has no tensor {tensor!r}")
        return e

    def __getitem__(self, tensor: str) -> PinnedArray:
        """Writable zero-copy numpy view of the slot's tensor (valid until commit/abort)."""
        _, v = self._entry(tensor)
        return self._array_at(tensor, v.data, v.dtype, tuple(v.shape[i] for i in range(v.ndim)),
                              v.nbytes, v.device)

    def __setitem__(self, tensor: str, value) -> None:
        self.copy_in(tensor, value)

    def _array_at(self, tensor, address, dtype, shape, nbytes, device=-1):
        self._check()
        _host_only(tensor, device, writer=True)
        nd = _numpy_dtype(dtype)
        if nd is None:
            raise TypeError(f"tensor '{tensor}' is bf16, which numpy cannot hold: use "
                            "writer.copy_in(name, torch_tensor) or a RawTensor")
        return pinned_array(address or 0, nbytes, nd, shape, self.guard, writeable=True)

    def tensor(self, tensor: str) -> Tensor:
        """Metadata and DLPack export (writable) of one tensor of the slot."""
        _, v = self._entry(tensor)
        return Tensor(v, self, writeable=True)

    def capsule(self, address, dtype, shape, strides, max_version, device=-1):
        self._check()
        return _dlpack.make_capsule(address, dtype, shape, strides, read_only=False,
                                    versioned=_dlpack.wants_versioned(max_version),
                                    on_release=None, device=device)

    def copy_in(self, tensor: str, value, cast: bool = False) -> None:
        """Copies a numpy array, torch tensor or RawTensor into the slot (dtype and shape must
        match the adapter's, or pass cast=True for float conversions)."""
        i, v = self._entry(tensor)
        src = _source(tensor, value, (v.dtype, tuple(v.shape[k] for k in range(v.ndim))), cast)
        self._copy(i, src)

    def _copy(self, index: int, src: _Source) -> None:
        """Host sources: lf_writer_copy_in (into a device-placed slot, a synchronous
        host-to-device copy). torch CUDA sources: into a device-placed slot, an asynchronous
        device-to-device (or peer) copy on the source device's current torch stream, which the
        commit waits for; into a host-placed slot, a device-to-host copy first."""
        if src.device < 0:
            rc = L.lf_writer_copy_in(self._handle, index, src.address, src.nbytes)
        elif self.device < 0:
            host = src.keep.cpu()  # synchronous with respect to the tensor's stream
            rc = L.lf_writer_copy_in(self._handle, index, host.data_ptr(), src.nbytes)
        else:
            rc = self._copy_async(index, src)
        if rc != L.LF_OK:
            msg = f"copy into tensor {index} of the write of '{self.name}' failed"
            h = self._client._handle
            if self.device >= 0 and h:  # device copies say why in the client's last error
                msg += ": " + L.lf_client_last_error(h).decode(errors="replace")
            raise error_for(rc, msg)

    def _copy_async(self, index: int, src: _Source) -> int:
        import torch  # present: src.keep is a torch CUDA tensor
        stream = torch.cuda.current_stream(src.device)
        # The library makes the slot's device current for the copy; torch's own idea of the
        # current device is restored when the block ends.
        with torch.cuda.device(src.device):
            rc = L.lf_writer_copy_in_async(self._handle, index, src.address, src.nbytes,
                                           src.device, stream.cuda_stream or None)
        if rc == L.LF_OK:
            self._keep.append(src.keep)  # freed only once the copy is known to be done
            self._streams[id(stream)] = stream
        return rc

    def _settle(self) -> None:
        """Waits for this write's asynchronous copies (before its slot goes back)."""
        streams, self._streams = list(self._streams.values()), {}
        for s in streams:
            s.synchronize()
        self._keep = []

    def commit(self) -> int:
        """Validates, versions and flips; returns the new version. Ends the write, except
        when the outcome is unknown (Timeout or DaemonUnreachable: the daemon was restarting,
        or slow): then the write stays open, and commit() may be called again (a repeated
        commit answers the version the first one made, or LeaseError once the daemon ended
        the lease) or abort()."""
        self._check()
        with self._client._use():
            out = ctypes.c_uint64()
            try:
                rc = L.lf_writer_commit(self._handle, self._flags, ctypes.byref(out))
            finally:
                # After a successful commit the daemon has waited for the copies already.
                self._settle()
            if rc not in (L.LF_E_TIMEOUT, L.LF_E_CONNECTION):  # the C writer is freed
                self._handle = None
                self.guard.alive = False
                self._client._writers.discard(self)
            if rc != L.LF_OK:
                raise self._client._fail(rc)
        self.version = out.value
        return self.version

    def abort(self) -> None:
        """Gives the slot back; the active version does not change. Idempotent."""
        if self._handle is None:
            return
        h, self._handle = self._handle, None
        self.guard.alive = False
        self._client._writers.discard(self)
        try:
            self._settle()  # no copy may still land in the slot once it is given back
        finally:
            L.lf_writer_abort(h)

    @property
    def ended(self) -> bool:
        return self._handle is None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.abort()
        elif self._handle is not None:
            self.commit()
        return False


class Client:
    """A connection to one loraflipd (its runtime directory; None: $LORAFLIP_RUNTIME_DIR or the
    default instance). Control calls are thread-safe; each thread reading gets its own reader
    handle. Not usable across fork(): open a Client in each process."""

    def __init__(self, runtime_dir: Optional[str | os.PathLike] = None, timeout_ms: int = 5000):
        self.runtime_dir = os.fspath(runtime_dir) if runtime_dir is not None else None
        self._dir = self.runtime_dir.encode() if self.runtime_dir is not None else None
        h = L.lf_client_p()
        rc = L.lf_client_open(self._dir, int(timeout_ms), ctypes.byref(h))
        if rc != L.LF_OK:
            raise error_for(rc, L.lf_last_error_message().decode(errors="replace"))
        self._handle = h.value
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._inflight = 0      # control calls running on other threads (close waits for them)
        self._closing = False
        self._local = threading.local()
        self._readers: list[_Reader] = []
        self._writers: set[Writer] = set()
        self._schemas: dict[str, dict[str, tuple[int, tuple, int]]] = {}

    # ---- lifecycle ----
    def close(self) -> None:
        """Aborts open writes, ends every pin and reader, closes the connection. Idempotent.
        Call it when no other thread is using the client."""
        with self._idle:
            if self._handle is None or self._closing:
                return
            self._closing = True
            while self._inflight:
                self._idle.wait()
        for w in list(self._writers):
            w.abort()
        with self._lock:
            readers, self._readers = self._readers, []
        for r in readers:
            r.close()
        h, self._handle = self._handle, None
        L.lf_client_close(h)

    @property
    def closed(self) -> bool:
        return self._handle is None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            if getattr(self, "_handle", None) is not None and os.getpid() == self._pid:
                self.close()
        except Exception:
            pass

    def _handle_or_raise(self) -> int:
        if self._handle is None or self._closing:
            raise ClosedError()
        return self._handle

    @contextlib.contextmanager
    def _use(self):
        """The control handle, kept open (close() waits) until the block ends."""
        with self._idle:
            if self._handle is None or self._closing:
                raise ClosedError()
            self._inflight += 1
        try:
            yield self._handle
        finally:
            with self._idle:
                self._inflight -= 1
                if not self._inflight:
                    self._idle.notify_all()

    def _fail(self, rc: int) -> LoraflipError:
        h = self._handle
        msg = L.lf_client_last_error(h).decode(errors="replace") if h else ""
        return error_for(rc, msg)

    def _json(self, fn, *args) -> Any:
        out = ctypes.c_void_p()
        with self._use() as h:
            rc = fn(h, *args, ctypes.byref(out))
            if rc != L.LF_OK:
                raise self._fail(rc)
        try:
            return json.loads(ctypes.string_at(out.value).decode())
        finally:
            L.lf_free(out)

    # ---- control ----
    def list(self) -> list[dict]:
        """Every live adapter: name, version, tensors, slot_bytes, slots, history."""
        return self._json(L.lf_client_list)["adapters"]

    def info(self, name: str) -> dict:
        """One adapter: versions, LoRA config, metadata, slots, tensors, counters."""
        return self._json(L.lf_client_info, _check_adapter_name(name))

    def stats(self) -> dict:
        return self._json(L.lf_client_stats)

    def rollback(self, name: str, version: int) -> None:
        """Makes an earlier, still-kept version active again."""
        bname = _check_adapter_name(name)
        with self._use() as h:
            rc = L.lf_client_rollback(h, bname, int(version))
            if rc != L.LF_OK:
                raise self._fail(rc)

    def drop(self, name: str) -> None:
        """Drops the adapter. The name is free at once (a later publish creates it anew);
        acquires on threads that used it raise loraflip.Stale. Its memory, and its entry in
        the daemon's adapter table, return once no reader pins it and no write holds it: until
        then the entry counts against --max-adapters (a create may raise TableFull)."""
        bname = _check_adapter_name(name)
        with self._use() as h:
            rc = L.lf_client_drop_adapter(h, bname)
            self._schemas.pop(name, None)
            if rc != L.LF_OK:
                raise self._fail(rc)

    def create(self, name: str, tensors: Mapping, config=None, *, slots: int = 0,
               history: int = -1, metadata: Optional[str] = None,
               placement: Optional[str] = None) -> None:
        """Creates an adapter whose schema is the names, dtypes and shapes of `tensors` (arrays,
        torch tensors, RawTensors, or (dtype, shape) pairs), in order, with a LoRA config.
        `placement`: "host" (the default), "cuda:0", or "cuda:0,1,..." to keep the slots in
        those GPUs' memory (the daemon needs --devices; versions are written to the first
        device and copied to the others before each flip)."""
        self._handle_or_raise()
        bname = _check_adapter_name(name)
        bplacement = _placement(placement) if placement is not None else None
        if not isinstance(tensors, Mapping) or not tensors:
            raise InvalidArgument(L.LF_E_INVALID_ARGUMENT, "tensors must be a non-empty dict")
        lora = _lora_config(config) if config is not None else None
        spec = L.lf_spec_p()
        rc = L.lf_spec_new(ctypes.byref(spec))
        if rc != L.LF_OK:
            raise error_for(rc, "lf_spec_new failed")
        try:
            for tname, t in tensors.items():
                if isinstance(t, tuple) and len(t) == 2 and not hasattr(t, "dtype"):
                    d, shape = dtype_code(t[0]), tuple(int(s) for s in t[1])
                else:
                    src = _source(tname, t, None, False)
                    d, shape = src.dtype, src.shape
                if len(shape) > L.LF_MAX_DIMS:
                    raise InvalidArgument(L.LF_E_INVALID_ARGUMENT,
                                          f"tensor '{tname}' has {len(shape)} dims (max {L.LF_MAX_DIMS})")
                arr = (ctypes.c_int64 * max(len(shape), 1))(*shape)
                rc = L.lf_spec_add_tensor(spec, _b(tname), d, len(shape), arr)
                if rc != L.LF_OK:
                    raise error_for(rc, f"tensor '{tname}': " + L.lf_last_error_message().decode())
            if lora is not None:
                if lora["r"] > 65536:
                    raise InvalidArgument(L.LF_E_INVALID_ARGUMENT, "r must be at most 65536")
                rc = L.lf_spec_set_lora(spec, lora["r"], lora["lora_alpha"],
                                        ",".join(lora["target_modules"]).encode(), int(lora["use_rslora"]))
                if rc != L.LF_OK:
                    raise error_for(rc, L.lf_last_error_message().decode())
            meta = metadata if metadata is not None else (lora["metadata"] if lora else None)
            if meta is not None:
                rc = L.lf_spec_set_metadata(spec, meta.encode())
                if rc != L.LF_OK:
                    raise error_for(rc, L.lf_last_error_message().decode())
            rc = L.lf_spec_set_slots(spec, int(slots), int(history))
            if rc != L.LF_OK:
                raise error_for(rc, L.lf_last_error_message().decode())
            if bplacement is not None:
                rc = L.lf_spec_set_placement(spec, bplacement)
                if rc != L.LF_OK:
                    raise error_for(rc, f"placement {placement!r}: " +
                                    L.lf_last_error_message().decode())
            with self._use() as h:
                rc = L.lf_client_create_adapter(h, bname, spec)
                if rc != L.LF_OK:
                    raise self._fail(rc)
        finally:
            L.lf_spec_free(spec)

    # ---- writes ----
    def write(self, name: str, *, lease_ms: int = 30000, check_finite: bool = True,
              checksum: bool = False, retry_s: float = _NO_FREE_SLOT_RETRY_S) -> Writer:
        """Begins a write (context manager): the trainer writes tensors in place, and the end
        of the block commits (an exception aborts). While readers pin every slot
        (LF_E_NO_FREE_SLOT) it retries for up to `retry_s` seconds, then raises NoFreeSlot."""
        _check_adapter_name(name)
        return Writer(self, name, lease_ms, check_finite, checksum, retry_s)

    def _schema(self, name: str, refresh: bool = False) -> dict:
        if refresh or name not in self._schemas:
            info = self.info(name)
            self._schemas[name] = {t["name"]: (i, tuple(t["shape"]), dtype_code(t["dtype"]))
                                   for i, t in enumerate(info["tensors"])}
        return self._schemas[name]

    def publish(self, name: str, tensors: Mapping, config=None, *, cast: bool = False,
                check_finite: bool = True, checksum: bool = False, slots: int = 0,
                history: int = -1, retry_s: float = _NO_FREE_SLOT_RETRY_S,
                placement: Optional[str] = None) -> int:
        """Publishes a full set of tensors (a dict as PEFT's get_peft_model_state_dict returns
        it, of numpy arrays or torch tensors) as the next version; returns that version.
        Creates the adapter on first use from the shapes, `config` (r, lora_alpha,
        target_modules: a dict or a LoraConfig) and `placement` (see create; an existing
        adapter placed elsewhere is refused). Into a device-placed adapter, numpy arrays are
        copied host to device and torch CUDA tensors device to device on their current
        stream. Every check runs before the slot is touched: a bad input raises and changes
        nothing."""
        self._handle_or_raise()
        _check_adapter_name(name)
        if not isinstance(tensors, Mapping) or not tensors:
            raise InvalidArgument(L.LF_E_INVALID_ARGUMENT, "tensors must be a non-empty dict")
        if placement is not None:
            _placement(placement)
        created = False
        try:
            schema = self._schema(name)
        except NotFound:
            if config is None:
                raise NotFound(L.LF_E_NOT_FOUND,
                               f"no adapter '{name}': pass config=(r, lora_alpha, target_modules) "
                               "to create it from these tensors") from None
            self._check_rank(tensors, _lora_config(config)["r"])
            self.create(name, tensors, config, slots=slots, history=history, placement=placement)
            schema = self._schema(name, refresh=True)
            created = True
        if config is not None:
            self._check_config(name, config)
        if placement is not None and not created:
            self._check_placement(name, placement)
        missing = [t for t in schema if t not in tensors]
        extra = [t for t in tensors if t not in schema]
        if missing or extra:
            raise InvalidArgument(
                L.LF_E_INVALID_ARGUMENT,
                f"the tensors do not match adapter '{name}': missing {missing[:5]}"
                f"{'...' if len(missing) > 5 else ''}, unknown {extra[:5]}{'...' if len(extra) > 5 else ''}")
        sources = [(schema[t][0], _source(t, tensors[t], (schema[t][2], schema[t][1]), cast))
                   for t in schema]
        deadline = time.monotonic() + _COMMIT_OUTCOME_RETRY_S
        while True:
            w = self._write_all(name, sources, check_finite, checksum, retry_s)
            version = self._commit_until_answered(w, deadline)
            if version is not None:
                return version
            # The daemon ended the lease while the commit went unanswered (it restarted after
            # the lease expired, or ended it some other way): nothing was published.
            if time.monotonic() >= deadline:
                raise LeaseError(L.LF_E_LEASE, f"publish of '{name}': every write's lease ended "
                                 "before its commit was answered")
            _log.warning("publish of '%s': the daemon ended the write's lease before its commit "
                         "was answered (a restart?); writing the version again", name)

    def _write_all(self, name: str, sources: list, check_finite: bool, checksum: bool,
                   retry_s: float) -> "Writer":
        """Begins a write of `name` and copies every source into it."""
        try:
            w = self.write(name, check_finite=check_finite, checksum=checksum, retry_s=retry_s)
        except Stale:
            self._schemas.pop(name, None)
            raise
        try:
            if w.tensor_count != len(sources):
                # The adapter was dropped and re-created with another schema meanwhile.
                self._schemas.pop(name, None)
                raise Stale(L.LF_E_STALE, f"adapter '{name}' changed its schema; publish again")
            for index, src in sources:
                w._copy(index, src)  # the C side checks each size against the slot's
        except BaseException:
            w.abort()
            raise
        return w

    def _commit_until_answered(self, w: "Writer", deadline: float) -> Optional[int]:
        """Commits `w`, asking again while the outcome is unknown (the daemon restarting or
        slow) until `deadline`; a repeated commit is answered with the version the first one
        made. None when the daemon ended the lease meanwhile (the write must be made again)."""
        asked_again = False
        while True:
            try:
                version = w.commit()
            except (Timeout, DaemonUnreachable) as e:
                if time.monotonic() >= deadline:
                    w.abort()
                    raise
                if not asked_again:
                    _log.warning("commit of '%s' unanswered (%s); asking again", w.name, e)
                    asked_again = True
                time.sleep(0.05)
                continue
            except LeaseError:
                if not asked_again:
                    raise  # an answer about this very commit, not a lost one
                return None
            if asked_again:
                _log.warning("commit of '%s' answered after asking again: version %d",
                             w.name, version)
            return version

    def _check_rank(self, tensors: Mapping, r: int) -> None:
        for t, x in tensors.items():
            shape = x[1] if isinstance(x, tuple) else getattr(x, "shape", None)
            if shape is None or len(shape) != 2:
                continue
            if ".lora_A." in t and shape[0] != r or ".lora_B." in t and shape[1] != r:
                raise InvalidArgument(L.LF_E_INVALID_ARGUMENT,
                                      f"tensor '{t}' has shape {tuple(shape)}, which does not "
                                      f"match r={r}")

    def _check_placement(self, name: str, placement: str) -> None:
        have = self.info(name).get("placement", "host")
        want = placement.replace("device:", "cuda:", 1) if placement.startswith("device:") else placement
        if have != want:
            raise InvalidArgument(L.LF_E_INVALID_ARGUMENT,
                                  f"adapter '{name}' is placed on {have!r}, not {placement!r} "
                                  "(drop it and publish again to move it)")

    def _check_config(self, name: str, config) -> None:
        want = _lora_config(config)
        lora = self.info(name).get("lora", {})
        if int(lora.get("rank", want["r"])) != want["r"] or \
                abs(float(lora.get("alpha", want["lora_alpha"])) - want["lora_alpha"]) > 1e-9:
            raise InvalidArgument(L.LF_E_INVALID_ARGUMENT,
                                  f"adapter '{name}' exists with r={lora.get('rank')}, "
                                  f"lora_alpha={lora.get('alpha')}; the config given says "
                                  f"r={want['r']}, lora_alpha={want['lora_alpha']}")

    # ---- files ----
    def publish_file(self, name: str, path: str | os.PathLike, config=None, **kwargs) -> int:
        """Publishes a safetensors file, or a PEFT adapter folder (adapter_model.safetensors and
        adapter_config.json, whose config creates the adapter on first use)."""
        p = Path(path)
        if p.is_dir():
            cfg_path = p / "adapter_config.json"
            if config is None and cfg_path.exists():
                config = json.loads(cfg_path.read_text())
            p = p / "adapter_model.safetensors"
            if not p.exists():
                raise FileNotFoundError(f"{path}: no adapter_model.safetensors in this folder")
        tensors, _ = st.read(p)
        return self.publish(name, tensors, config, **kwargs)

    def export(self, name: str, path: str | os.PathLike, version: Optional[int] = None) -> Path:
        """Writes the active (or a given kept) version as safetensors: a file if `path` ends
        with .safetensors, else a PEFT adapter folder with adapter_config.json."""
        p = Path(path)
        info = self.info(name)
        with self.acquire(name, version=version) as v:
            items = [(t, dtype_code(v.tensor(t).dtype), v.tensor(t).shape, memoryview(v.bits(t)))
                     for t in v]
            target = p if p.suffix == ".safetensors" else p / "adapter_model.safetensors"
            if target is not p:
                p.mkdir(parents=True, exist_ok=True)
            st.write(target, items, {"format": "pt", "loraflip_version": str(v.version)})
        if target is not p:
            (p / "adapter_config.json").write_text(json.dumps(_peft_config(info), indent=2))
        return target if target is p else p

    # ---- reads ----
    def _reader(self) -> _Reader:
        r = getattr(self._local, "reader", None)
        if r is None or r.handle is None:
            self._handle_or_raise()
            r = _Reader(self._dir)
            self._local.reader = r
            with self._lock:
                self._readers.append(r)
        return r

    def _pin(self, name: str, min_version: Optional[int], exact: bool) -> Version:
        self._handle_or_raise()
        if not isinstance(name, str):
            raise InvalidArgument(L.LF_E_INVALID_ARGUMENT, f"bad adapter name {name!r}")
        r = self._reader()
        r.drain()
        want = int(min_version or 0)
        if exact and want <= 0:
            raise InvalidArgument(L.LF_E_INVALID_ARGUMENT, "version must be >= 1")
        for attempt in range(2):
            ref, schema = r.lookup_after_stale(name) if attempt else r.lookup(name)
            out = L.lf_pin_p()
            fn = L.lf_reader_acquire_version if exact else L.lf_reader_acquire
            rc = fn(r.handle, ref, want, ctypes.byref(out))
            if rc == L.LF_E_STALE and attempt == 0:
                continue  # dropped, maybe re-created: look the name up again
            if rc != L.LF_OK:
                raise r.fail(rc)
            break
        handle = out.value
        if not schema:
            v = L.lf_tensor_view_t()
            for i in range(L.lf_pin_tensor_count(handle)):
                L.lf_pin_tensor(handle, i, ctypes.byref(v))
                schema[v.name.decode()] = i
        pin = _Pin(r, handle, name, L.lf_pin_version(handle), schema)
        r.live.add(pin)
        return Version(pin)

    def acquire(self, name: str, min_version: Optional[int] = None, *,
                version: Optional[int] = None) -> _Acquire:
        """Pins the active version (if >= min_version; else the newest kept one that is), or
        exactly `version`. Use as `with client.acquire(name) as v: v[tensor]`. Acquire and
        release touch shared memory only. Release only after the work reading it is done.
        An adapter dropped since this thread last read it raises loraflip.Stale, as the C API
        does (LF_E_STALE); a name this thread never saw raises NotFound; an adapter created
        again under the name is acquired."""
        if version is not None:
            return _Acquire(self, name, version, True)
        return _Acquire(self, name, min_version, False)

    def active_version(self, name: str) -> int:
        """The active version now (0: none yet), without pinning."""
        self._handle_or_raise()
        r = self._reader()
        for attempt in range(2):
            ref, _ = r.lookup_after_stale(name) if attempt else r.lookup(name)
            out = ctypes.c_uint64()
            rc = L.lf_reader_active_version(r.handle, ref, ctypes.byref(out))
            if rc == L.LF_E_STALE and attempt == 0:
                continue  # dropped, maybe re-created: look the name up again
            if rc != L.LF_OK:
                raise error_for(rc, f"adapter '{name}' was dropped" if rc == L.LF_E_STALE else "")
            return out.value
        raise AssertionError("unreachable")

    def wait(self, name: str, newer_than: int = 0, timeout: Optional[float] = None) -> int:
        """Blocks until the active version is newer than `newer_than`; returns it. Raises
        loraflip.Timeout after `timeout` seconds (None: forever; 0: look once). No message to
        the daemon; the wait goes in slices of at most 200 ms, so Ctrl-C stays responsive."""
        self._handle_or_raise()
        r = self._reader()
        ref, _ = r.lookup(name)
        deadline = None if timeout is None else time.monotonic() + timeout
        out = ctypes.c_uint64()
        while True:
            rc = L.lf_reader_wait(r.handle, ref, int(newer_than), _slice_ms(deadline),
                                  ctypes.byref(out))
            if rc == L.LF_OK:
                return out.value
            if rc != L.LF_E_TIMEOUT:
                raise r.fail(rc)
            if deadline is not None and time.monotonic() >= deadline:
                # Not r.fail: the C message names the last slice, not the caller's timeout.
                ms = f"{max(0.0, timeout) * 1000:.3f}".rstrip("0").rstrip(".")
                raise Timeout(rc, f"no version of '{name}' newer than {int(newer_than)} within "
                                  f"{ms} ms")

    def watch(self, name: Optional[str] = None, timeout: Optional[float] = None) -> Watcher:
        """Flip events (FlipEvent(adapter, version)) of `name` (None: every adapter). Iteration
        ends when no event comes for `timeout` seconds (None: never). Events can be lost to a
        watcher that falls behind: see Watcher for how to tell."""
        self._handle_or_raise()
        return Watcher(self._dir, name, timeout)


def _peft_config(info: dict) -> dict:
    try:
        cfg = json.loads(info.get("metadata") or "{}").get("peft_config")
    except ValueError:
        cfg = None
    if not isinstance(cfg, dict):
        lora = info.get("lora", {})
        cfg = {"peft_type": "LORA", "r": lora.get("rank"), "lora_alpha": lora.get("alpha"),
               "target_modules": lora.get("target_modules"), "use_rslora": lora.get("use_rslora")}
    return cfg
