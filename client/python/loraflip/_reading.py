"""Reading: the per-thread readers, the pins they hold, and what a pin is read through
(Version, the pinned mapping Client.acquire yields, and Tensor, which a Writer uses too)."""
from __future__ import annotations

import collections
import ctypes
import threading
import warnings
from collections.abc import Mapping
from typing import Optional

import numpy as np

from . import _dlpack
from . import _dtypes
from . import _lib as L
from ._args import device_ordinal, name_bytes
from ._dtypes import code_of_numpy, dtype_code, dtype_name, numpy_dtype
from ._errors import InvalidArgument, LoraflipError, NotFound, Stale, error_for
from ._views import Guard, PinnedArray, pinned_array

# ---- readers: one per thread, as the C API wants ----

class Schema(dict):
    """Tensor name -> index in the adapter's schema, for one lookup of the name (an adapter
    created again under it gets a new one). `layouts` keeps, per device, where each tensor
    sits relative to the first: the schema fixes every tensor's offset in a slot, so every
    slot and every device copy has the same layout, and torch_tensors() of a later version
    needs one view, not one per tensor. `memo`: what integrations derive from the adapter's
    schema and config alone (both fixed until the adapter is created again)."""

    def __init__(self):
        super().__init__()
        self.layouts: dict = {}
        self.memo: dict = {}


class Reader:
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
        rc = L.lf_reader_find(self.handle, name_bytes(name), ctypes.byref(ref))
        if rc != L.LF_OK:
            self.refs.pop(name, None)
            raise self.fail(rc)
        entry = (ref.value, Schema())
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


class Pin:
    """One pinned version. Ends when its acquire block ends and every DLPack export is gone."""

    def __init__(self, reader: Reader, handle: int, name: str, version: int, schema: dict):
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
        return self.capsule(array.__array_interface__["data"][0], code_of_numpy(array.dtype),
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


def host_only(tensor: str, device: int, writer: bool = False) -> None:
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
        if self._writeable:
            self._owner._note_device_export(self.device)
        return {"shape": self.shape, "typestr": _CAI_TYPESTR[dtype_code(self.dtype)],
                "data": (self._address if self.nbytes else 0, not self._writeable),
                "strides": None, "version": 3}


class Version(Mapping):
    """A pinned version of an adapter, yielded by `Client.acquire`. A read-only mapping of
    tensor name -> numpy view; the views stop working when the block ends."""

    def __init__(self, pin: Pin):
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
            ordinal = device_ordinal(device)
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
        host_only(tensor, v.device)
        size = L.lf_dtype_size(v.dtype)
        dt = np.dtype({1: "u1", 2: "<u2", 4: "<u4", 8: "<u8"}[size])
        return pinned_array(v.data or 0, v.nbytes, dt, tuple(v.shape[i] for i in range(v.ndim)),
                            self._pin.guard, writeable=False)

    def _array_at(self, tensor, address, dtype, shape, nbytes, device=-1) -> PinnedArray:
        self._pin.guard.check()
        host_only(tensor, device)
        nd = numpy_dtype(dtype)
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

    def torch_tensors(self, device=None) -> dict:
        """Every tensor as a read-only-by-contract torch.Tensor over the pinned memory (bf16
        included), from one DLPack export of the version's bytes sliced into views: a step
        that binds a few hundred tensors pays one export, not one each. `device` as in
        tensor(). The pin lasts while any of the tensors lives (as for any DLPack export)."""
        import torch  # the caller has it: it asks for torch tensors
        layout = self._pin.schema.layouts.get(device)
        if layout is None:
            layout = self._layout(device)
            if layout is None:  # empty tensors: no span to slice
                return {t: torch.from_dlpack(self.tensor(t, device)) for t in self._pin.schema}
            self._pin.schema.layouts[device] = layout
        first, first_offset, span_bytes, pieces, order = layout
        v = self._view(first, device)
        span = torch.from_dlpack(self._pin.capsule((v.data or 0) - first_offset, L.LF_DTYPE_U8,
                                                   (span_bytes,), None, None,
                                                   device=int(v.device)))
        if pieces is not None:
            # The usual case, every tensor at a multiple of its element size: over the span
            # seen as each dtype, one strided view per run of same-shaped tensors at a fixed
            # distance (a LoRA adapter's lora_A and lora_B weights make a few such runs),
            # unbound into one view per tensor; torch makes those several times faster than a
            # strided view each.
            bases = {dtype: span[:span_bytes - span_bytes % size].view(dtype)
                     for dtype, size in pieces[0]}
            views = {}
            for names, dtype, shape, strides, at, step in pieces[1]:
                if len(names) == 1:
                    views[names[0]] = bases[dtype].as_strided(shape, strides, at)
                else:
                    views.update(zip(names, bases[dtype].as_strided(
                        (len(names),) + shape, (step,) + strides, at).unbind(0)))
            return {t: views[t] for t in pieces[2]}
        return {t: span[at:at + nbytes].view(dtype).view(shape)
                for t, at, nbytes, dtype, shape in order}

    def _layout(self, device):
        """(first tensor, its offset in the span, span bytes, strided pieces (None unless every
        tensor sits at a multiple of its element size): ({(torch dtype, size)}, runs as
        _strided_runs gives them, [tensor] by address), [(tensor, byte offset, bytes, torch
        dtype, shape)] by address)."""
        import torch
        parts = []
        for t in self._pin.schema:
            v = self._view(t, device)
            parts.append((t, v.data or 0, v.nbytes, v.dtype, tuple(v.shape[:v.ndim])))
        if not parts or any(p[1] == 0 for p in parts):
            return None
        parts.sort(key=lambda p: p[1])
        start, end = parts[0][1], max(p[1] + p[2] for p in parts)
        order = [(t, address - start, nbytes, getattr(torch, _dtypes.BY_CODE[code].long_name),
                  shape) for t, address, nbytes, code, shape in parts]
        pieces = None
        if all(at % dtype.itemsize == 0 for _, at, _, dtype, _ in order):
            dtypes = {(dtype, dtype.itemsize) for _, _, _, dtype, _ in order}
            pieces = (dtypes, _strided_runs(order), [t for t, *_ in order])
        first = next(iter(self._pin.schema))
        first_offset = next(at for t, at, *_ in order if t == first)
        return first, first_offset, end - start, pieces, order

    def copy(self) -> dict[str, np.ndarray]:
        """Copies of every tensor (bf16 as uint16 patterns unless ml_dtypes is installed)."""
        out = {}
        for t in self._pin.schema:
            v = self._view(t)
            nd = numpy_dtype(v.dtype)
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


class Acquire:
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


def _strided_runs(order: list) -> list:
    """Groups tensors ([(tensor, byte offset, bytes, torch dtype, shape)] by address, each at a
    multiple of its element size) into runs of one dtype and shape whose offsets step by the
    same distance, no less than a tensor's size: [(tensors, torch dtype, shape, contiguous
    strides, first offset in elements, step in elements)]. A run of one has step 0."""
    groups: dict = {}
    for t, at, _, dtype, shape in order:  # by address, so each group's offsets grow
        groups.setdefault((dtype, shape), []).append((t, at // dtype.itemsize))
    runs = []
    for (dtype, shape), members in groups.items():
        strides, numel = [], 1
        for n in reversed(shape):
            strides.append(numel)
            numel *= n
        strides = tuple(reversed(strides))
        run: list = []
        step = 0
        for t, at in members:
            if run and numel > 0 and (len(run) == 1 or at - run[-1][1] == step) and \
                    at - run[-1][1] >= numel:
                step = at - run[-1][1]
                run.append((t, at))
                continue
            if run:
                runs.append(_run(run, dtype, shape, strides, step))
            run, step = [(t, at)], 0
        runs.append(_run(run, dtype, shape, strides, step))
    return runs


def _run(run: list, dtype, shape: tuple, strides: tuple, step: int) -> tuple:
    return ([t for t, _ in run], dtype, shape, strides, run[0][1], step if len(run) > 1 else 0)
