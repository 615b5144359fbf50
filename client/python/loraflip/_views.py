"""numpy views of slot memory that refuse to be used once their version is released.

A numpy array cannot be revoked: it holds a raw pointer. So the arrays loraflip hands out are a
small ndarray subclass, PinnedArray, that checks a shared guard before every Python-level use:
indexing, arithmetic and ufuncs, numpy functions, reductions, copies and new views, conversion
to Python objects, printing, pickling and DLPack export. Once the version is released (or the
write committed or aborted), each of them raises ReleasedError instead of reading memory that
may already hold another version.

What the guard cannot see: code that takes the raw buffer (`np.asarray(a)`, `memoryview(a)`,
`a.ctypes`, `a.__array_interface__`) gets a plain view with no guard. Keep such uses inside the
acquire block, or copy (`np.array(a)`, `a.copy()`) while the version is pinned.
"""
from __future__ import annotations

import numpy as np

from ._errors import ReleasedError


class Guard:
    """Shared by every array of one pinned version (or one write). `alive` goes False once."""

    __slots__ = ("alive", "what", "export")

    def __init__(self, what: str, export=None):
        self.alive = True
        self.what = what          # e.g. "version 7 of 'policy'"
        self.export = export      # callable(array, kwargs) -> DLPack capsule, or None

    def check(self) -> None:
        if not self.alive:
            raise ReleasedError(
                f"{self.what} was released; its memory may now hold another version. Copy what "
                "you need (np.array(view)) inside the acquire or write block")


def _unwrap(x):
    """A plain ndarray view of x after checking its guard; other objects unchanged."""
    if isinstance(x, PinnedArray):
        g = x._lf_guard
        if g is not None:
            g.check()
        return x.view(np.ndarray)
    if isinstance(x, (list, tuple)) and any(isinstance(y, PinnedArray) for y in x):
        return type(x)(_unwrap(y) for y in x)
    return x


def _check(x) -> None:
    if isinstance(x, PinnedArray):
        if x._lf_guard is not None:
            x._lf_guard.check()
    elif isinstance(x, (list, tuple)):
        for y in x:
            if isinstance(y, PinnedArray) and y._lf_guard is not None:
                y._lf_guard.check()


class PinnedArray(np.ndarray):
    """An ndarray over loraflip slot memory, valid while its version is pinned (readers) or its
    write is open (writers). See the module docstring for what is and is not guarded."""

    _lf_guard: Guard | None = None
    _lf_range: tuple[int, int] = (0, 0)

    def __array_finalize__(self, obj):
        g = getattr(obj, "_lf_guard", None)
        if g is None:
            return
        g.check()  # no new view or copy of a released version
        lo, hi = obj._lf_range
        addr = self.__array_interface__["data"][0]
        if lo <= addr < hi or (self.size == 0 and addr == lo):
            self._lf_guard = g   # a view of the same memory: same guard
            self._lf_range = (lo, hi)
        # else: a copy (astype, copy, ...) owns its memory and needs no guard.

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        out = kwargs.get("out")
        args = [_unwrap(x) for x in inputs]
        if out is not None:
            kwargs["out"] = tuple(_unwrap(o) for o in out)
        result = getattr(ufunc, method)(*args, **kwargs)
        if out is not None:
            return out[0] if len(out) == 1 else out
        return result

    def __array_function__(self, func, types, args, kwargs):
        for a in args:
            _check(a)
        for a in kwargs.values():
            _check(a)
        return super().__array_function__(func, types, args, kwargs)

    def _guard_check(self):
        if self._lf_guard is not None:
            self._lf_guard.check()

    def __getitem__(self, key):
        self._guard_check()
        return super().__getitem__(key)

    def __setitem__(self, key, value):
        self._guard_check()
        super().__setitem__(key, _unwrap(value))

    def __iter__(self):
        self._guard_check()
        return iter(self.view(np.ndarray))

    def __repr__(self):
        if self._lf_guard is not None and not self._lf_guard.alive:
            return f"<PinnedArray of {self._lf_guard.what}: released>"
        return repr(self.view(np.ndarray)).replace("array(", "PinnedArray(", 1)

    def __str__(self):
        self._guard_check()
        return str(self.view(np.ndarray))

    def __format__(self, spec):
        self._guard_check()
        return format(self.view(np.ndarray), spec)

    def __array__(self, dtype=None, copy=None):
        self._guard_check()
        a = self.view(np.ndarray)
        if dtype is not None and dtype != a.dtype:
            return a.astype(dtype)
        return a.copy() if copy else a

    def __reduce__(self):
        self._guard_check()
        return self.view(np.ndarray).copy().__reduce__()

    def __reduce_ex__(self, protocol):
        self._guard_check()
        return self.view(np.ndarray).copy().__reduce_ex__(protocol)

    def __copy__(self):
        self._guard_check()
        return self.view(np.ndarray).copy()

    def __deepcopy__(self, memo):
        return self.__copy__()

    def __float__(self):
        self._guard_check()
        return float(self.view(np.ndarray))

    def __int__(self):
        self._guard_check()
        return int(self.view(np.ndarray))

    def __bool__(self):
        self._guard_check()
        return bool(self.view(np.ndarray))

    def __index__(self):
        self._guard_check()
        return self.view(np.ndarray).__index__()

    def __dlpack__(self, *, stream=None, max_version=None, dl_device=None, copy=None):
        self._guard_check()
        if copy:
            return self.view(np.ndarray).copy().__dlpack__(max_version=max_version)
        if self._lf_guard is not None and self._lf_guard.export is not None:
            return self._lf_guard.export(self, max_version)
        return self.view(np.ndarray).__dlpack__(max_version=max_version)

    def __dlpack_device__(self):
        return (1, 0)  # kDLCPU

    def copy(self, order="C"):
        self._guard_check()
        return self.view(np.ndarray).copy(order=order)

    def astype(self, dtype, *args, **kwargs):
        self._guard_check()
        return self.view(np.ndarray).astype(dtype, *args, **kwargs)

    def tolist(self):
        self._guard_check()
        return self.view(np.ndarray).tolist()

    def tobytes(self, order="C"):
        self._guard_check()
        return self.view(np.ndarray).tobytes(order)

    def item(self, *args):
        self._guard_check()
        return self.view(np.ndarray).item(*args)

    def tofile(self, *args, **kwargs):
        self._guard_check()
        return self.view(np.ndarray).tofile(*args, **kwargs)

    def dot(self, b, out=None):
        self._guard_check()
        return np.dot(self.view(np.ndarray), _unwrap(b), out=out)

    @property
    def released(self) -> bool:
        return self._lf_guard is not None and not self._lf_guard.alive


def pinned_array(address: int, nbytes: int, dtype: np.dtype, shape, guard: Guard,
                 writeable: bool) -> PinnedArray:
    """A PinnedArray over `nbytes` of host memory at `address`."""
    import ctypes
    buf = (ctypes.c_char * nbytes).from_address(address) if nbytes else bytearray()
    base = np.frombuffer(buf, dtype=dtype, count=nbytes // dtype.itemsize).reshape(shape)
    a = base.view(PinnedArray)
    a._lf_guard = guard
    a._lf_range = (address, address + nbytes)
    if not writeable:
        a.flags.writeable = False
    return a
