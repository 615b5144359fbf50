"""DLPack capsules built with ctypes, so that numpy.from_dlpack and torch.from_dlpack can view
slot memory without a copy (bf16 included, which numpy cannot hold).

Ownership: a capsule's DLManagedTensor owns a reference to the loraflip object that exported
it (`on_release` below). The consumer calls the deleter when its array dies; only then does the
exporter learn that the memory is no longer used (for a reader: only then may the version's pin
end). A capsule that is never consumed runs the deleter from its own destructor.

Struct layouts from dlpack.h (DLPack 0.8 for the legacy capsule, 1.0 for the versioned one).
"""
from __future__ import annotations

import ctypes
import itertools
import threading
from typing import Callable, Optional, Sequence

from . import _dtypes
from ._dtypes import kDLBfloat, kDLFloat, kDLInt, kDLUInt  # noqa: F401 (part of this module's names)

kDLCPU = 1
kDLCUDA = 2
DLPACK_FLAG_BITMASK_READ_ONLY = 1

# LF_DTYPE_* -> (DLDataTypeCode, bits), from the package's one dtype table
DL_DTYPES = _dtypes.DLPACK


class DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class DLTensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("device", DLDevice),
        ("ndim", ctypes.c_int32),
        ("dtype", DLDataType),
        ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("strides", ctypes.POINTER(ctypes.c_int64)),
        ("byte_offset", ctypes.c_uint64),
    ]


_Deleter = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


class DLManagedTensor(ctypes.Structure):
    _fields_ = [("dl_tensor", DLTensor), ("manager_ctx", ctypes.c_void_p), ("deleter", _Deleter)]


class DLPackVersion(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint32), ("minor", ctypes.c_uint32)]


class DLManagedTensorVersioned(ctypes.Structure):
    _fields_ = [
        ("version", DLPackVersion),
        ("manager_ctx", ctypes.c_void_p),
        ("deleter", _Deleter),
        ("flags", ctypes.c_uint64),
        ("dl_tensor", DLTensor),
    ]


# Everything a live capsule needs, keyed by manager_ctx: the struct, its shape and strides
# arrays, and the exporter's release callback. Popped by the deleter.
_live: dict[int, tuple] = {}
_live_lock = threading.Lock()
_keys = itertools.count(1)


def _delete(managed_ptr: int) -> None:
    # Called by the consumer (or by the capsule destructor) exactly once per capsule.
    if not managed_ptr:
        return
    # manager_ctx sits at the same place in neither struct, so the key is looked up by address.
    with _live_lock:
        entry = _live.pop(managed_ptr, None)
    if entry is not None:
        on_release = entry[-1]
        if on_release is not None:
            on_release()


_deleter = _Deleter(_delete)

_PyCapsule_Destructor = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
# Our own handle on the interpreter's symbols: argtypes set on ctypes.pythonapi would be
# shared with (and could be changed by) any other module.
_api = ctypes.PyDLL(None)
# PyObject *PyCapsule_New(void *pointer, const char *name, PyCapsule_Destructor destructor);
_api.PyCapsule_New.restype = ctypes.py_object
_api.PyCapsule_New.argtypes = [ctypes.c_void_p, ctypes.c_char_p, _PyCapsule_Destructor]
# int PyCapsule_IsValid(PyObject *capsule, const char *name); the capsule passed as a raw
# address because it is being destroyed (refcount 0) when the destructor asks.
_api.PyCapsule_IsValid.restype = ctypes.c_int
_api.PyCapsule_IsValid.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
# void *PyCapsule_GetPointer(PyObject *capsule, const char *name);
_api.PyCapsule_GetPointer.restype = ctypes.c_void_p
_api.PyCapsule_GetPointer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]

# Capsule names must outlive the capsules: module-level bytes objects do.
_NAME = b"dltensor"
_NAME_VERSIONED = b"dltensor_versioned"


def _capsule_destructor(capsule: int) -> None:
    # A capsule that no consumer renamed ("used_dltensor") still owns its tensor.
    for name in (_NAME, _NAME_VERSIONED):
        if _api.PyCapsule_IsValid(capsule, name):
            _delete(_api.PyCapsule_GetPointer(capsule, name))
            return


_destructor = _PyCapsule_Destructor(_capsule_destructor)


def make_capsule(data: int, dtype: int, shape: Sequence[int], strides: Optional[Sequence[int]],
                 *, read_only: bool, versioned: bool,
                 on_release: Optional[Callable[[], None]], device: int = -1) -> object:
    """A DLPack capsule over memory at `data` (host, or CUDA device `device` when >= 0). `strides` in elements (None: C order).
    `on_release` runs once, when the consumer is done with the memory (or never consumed it)."""
    if dtype not in DL_DTYPES:
        raise TypeError(f"dtype {dtype} has no DLPack equivalent")
    code, bits = DL_DTYPES[dtype]
    ndim = len(shape)
    shape_arr = (ctypes.c_int64 * max(ndim, 1))(*shape)
    strides_arr = (ctypes.c_int64 * max(ndim, 1))(*strides) if strides is not None else None
    managed = DLManagedTensorVersioned() if versioned else DLManagedTensor()
    t = managed.dl_tensor
    t.data = data
    t.device = DLDevice(kDLCUDA, device) if device >= 0 else DLDevice(kDLCPU, 0)
    t.ndim = ndim
    t.dtype = DLDataType(code, bits, 1)
    t.shape = ctypes.cast(shape_arr, ctypes.POINTER(ctypes.c_int64))
    t.strides = (ctypes.cast(strides_arr, ctypes.POINTER(ctypes.c_int64))
                 if strides_arr is not None else ctypes.POINTER(ctypes.c_int64)())
    t.byte_offset = 0
    key = next(_keys)
    managed.manager_ctx = key
    managed.deleter = _deleter
    if versioned:
        managed.version = DLPackVersion(1, 0)
        managed.flags = DLPACK_FLAG_BITMASK_READ_ONLY if read_only else 0
    address = ctypes.addressof(managed)
    with _live_lock:
        _live[address] = (managed, shape_arr, strides_arr, on_release)
    try:
        return _api.PyCapsule_New(address, _NAME_VERSIONED if versioned else _NAME, _destructor)
    except BaseException:
        with _live_lock:
            _live.pop(address, None)
        raise


def wants_versioned(max_version) -> bool:
    """The array API rule: a consumer that passes max_version >= (1, 0) accepts DLPack 1.0."""
    return max_version is not None and tuple(max_version)[:1] >= (1,)


def live_capsules() -> int:
    """How many exported tensors are not yet deleted (for tests)."""
    with _live_lock:
        return len(_live)
