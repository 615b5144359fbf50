"""Writes: a Writer holds one slot lent by the daemon, from Client.write (or publish) until its
commit or abort."""
from __future__ import annotations

import ctypes
import sys
import time
from typing import Optional

from . import _dlpack
from . import _lib as L
from ._args import name_bytes
from ._dtypes import numpy_dtype
from ._errors import NotFound, ReleasedError, error_for
from ._reading import Tensor, host_only
from ._sources import Source, source
from ._views import Guard, PinnedArray, pinned_array


class Writer:
    """One write in progress (Client.write): a slot lent by the daemon. Index it by tensor name
    for writable numpy views, or `copy_in`; leave the `with` block to commit (an exception
    aborts). Belongs to one thread; valid until commit or abort."""

    def __init__(self, client, name: str, lease_ms: int, check_finite: bool,
                 checksum: bool, retry_s: float):
        self._client = client
        self.name = name
        self._flags = (L.LF_COMMIT_CHECK_FINITE if check_finite else 0) | \
                      (L.LF_COMMIT_CHECKSUM if checksum else 0)
        h = L.lf_writer_p()
        deadline = time.monotonic() + retry_s
        with client._use() as handle:
            while True:
                rc = L.lf_client_begin_write(handle, name_bytes(name), int(lease_ms), ctypes.byref(h))
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
        # Devices whose tensors were handed out writable (DLPack, __cuda_array_interface__):
        # whatever the caller queues on them is covered by the commit (_cover_device_writes).
        self._exported_devices: set = set()
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
        host_only(tensor, device, writer=True)
        nd = numpy_dtype(dtype)
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
        self._note_device_export(device)
        return _dlpack.make_capsule(address, dtype, shape, strides, read_only=False,
                                    versioned=_dlpack.wants_versioned(max_version),
                                    on_release=None, device=device)

    def _note_device_export(self, device: int) -> None:
        if device >= 0:
            self._exported_devices.add(device)

    def commit_after(self, stream=None, device: int = -1) -> None:
        """Makes the commit wait for the GPU work queued on `stream` up to the commit: a
        torch.cuda.Stream, any stream object with `cuda_stream` or `ptr` (CuPy), a raw
        cudaStream_t address, or None for the default stream of `device` (-1: the slot's).
        Needed only for writes this package cannot see (your own kernels through a tensor's
        DLPack or __cuda_array_interface__ export) on streams other than torch's current one,
        which the commit covers by itself. Does nothing for a host-placed adapter."""
        self._check()
        # The library asks the runtime which device a stream belongs to.
        handle = getattr(stream, "cuda_stream", getattr(stream, "ptr", stream))
        rc = L.lf_writer_commit_after(self._handle, int(device), handle or None)
        if rc != L.LF_OK:
            raise self._copy_failed(rc, "naming a stream to the commit")

    def _cover_device_writes(self) -> None:
        """For every device whose slot tensors were handed out writable: has the commit wait for
        the current torch stream of that device (what torch ops on the exported tensors run on)
        or, without torch in use, for the device's default stream (CuPy's and Numba's default).
        Without it the daemon could check and flip before those writes land."""
        torch = sys.modules.get("torch")
        cuda = getattr(torch, "cuda", None)
        torch_in_use = cuda is not None and getattr(cuda, "is_initialized", lambda: True)()
        for device in sorted(self._exported_devices):
            stream = cuda.current_stream(device) if torch_in_use else None
            rc = L.lf_writer_commit_after(self._handle, device,
                                          getattr(stream, "cuda_stream", 0) or None)
            if rc != L.LF_OK:
                raise self._copy_failed(rc, f"covering the writes through device {device}'s views")

    def copy_in(self, tensor: str, value, cast: bool = False) -> None:
        """Copies a numpy array, torch tensor or RawTensor into the slot (dtype and shape must
        match the adapter's, or pass cast=True for float conversions)."""
        i, v = self._entry(tensor)
        src = source(tensor, value, (v.dtype, tuple(v.shape[k] for k in range(v.ndim))), cast)
        self._copy(i, src)

    def _copy(self, index: int, src: Source) -> None:
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
            raise self._copy_failed(rc, f"copy into tensor {index}")

    def _copy_all(self, sources: list[tuple[int, Source]]) -> None:
        """Copies (tensor index, source) pairs: host sources all in one call
        (lf_writer_copy_in_all), any torch CUDA source one by one (_copy)."""
        if any(src.device >= 0 for _, src in sources):
            for index, src in sources:
                self._copy(index, src)
            return
        count = self.tensor_count
        addresses = (ctypes.c_void_p * count)()
        sizes = (ctypes.c_size_t * count)()
        for index, src in sources:
            addresses[index] = src.address or None
            sizes[index] = src.nbytes
        rc = L.lf_writer_copy_in_all(self._handle, addresses, sizes)
        if rc != L.LF_OK:
            raise self._copy_failed(rc, "copy into the tensors")

    def _copy_failed(self, rc: int, what: str):
        msg = f"{what} of the write of '{self.name}' failed"
        h = self._client._handle
        if self.device >= 0 and h:  # device copies say why in the client's last error
            msg += ": " + L.lf_client_last_error(h).decode(errors="replace")
        return error_for(rc, msg)

    def _copy_async(self, index: int, src: Source) -> int:
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
            self._cover_device_writes()
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
