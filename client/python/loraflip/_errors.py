"""Exceptions: one base class carrying the C status code and the detailed message."""
from __future__ import annotations

from . import _lib as L


class LoraflipError(Exception):
    """A loraflip call failed. `code` is the LF_E_* status (loraflip.h), `message` the detail."""

    code: int = 0

    def __init__(self, code: int, message: str):
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        name = L.lf_strerror(self.code).decode()
        return f"{self.message} [{name}, code {self.code}]" if self.message else \
            f"{name} [code {self.code}]"


class InvalidArgument(LoraflipError, ValueError):
    """LF_E_INVALID_ARGUMENT: a bad name, shape, dtype, flag or pointer."""


class NotFound(LoraflipError, LookupError):
    """LF_E_NOT_FOUND: no adapter, tensor or version by that name or number."""

    def __str__(self) -> str:  # LookupError would quote the args tuple otherwise
        return LoraflipError.__str__(self)


class Exists(LoraflipError):
    """LF_E_EXISTS: an adapter of that name exists already."""


class ArenaFull(LoraflipError):
    """LF_E_ARENA_FULL: not enough room in the shared-memory arena."""


class NoFreeSlot(LoraflipError):
    """LF_E_NO_FREE_SLOT: every slot is active, kept, pinned or being written; retry later."""


class TableFull(LoraflipError):
    """LF_E_TABLE_FULL: the adapter table or the reader table is full."""


class ProtocolError(LoraflipError):
    """LF_E_PROTOCOL or LF_E_PROTOCOL_VERSION or LF_E_UNKNOWN_OP."""


class LayoutMismatch(LoraflipError):
    """LF_E_LAYOUT_MISMATCH: the arena was made by a build with another layout."""


class Timeout(LoraflipError, TimeoutError):
    """LF_E_TIMEOUT: nothing happened before the deadline."""


class DaemonUnreachable(LoraflipError, ConnectionError):
    """LF_E_CONNECTION: no daemon at that runtime directory, or it did not answer."""

    def __init__(self, code: int, message: str):
        # ConnectionError is an OSError; keep its (errno, strerror) out of the way.
        LoraflipError.__init__(self, code, message)

    def __str__(self) -> str:
        return LoraflipError.__str__(self)


class LeaseError(LoraflipError):
    """LF_E_LEASE: the write lease is unknown, expired or already ended."""


class ValidationError(LoraflipError, ValueError):
    """LF_E_VALIDATION: the written tensors failed a commit check (NaN, Inf, checksum)."""


class NoVersion(LoraflipError, LookupError):
    """LF_E_NO_VERSION: no committed version satisfies the request."""

    def __str__(self) -> str:
        return LoraflipError.__str__(self)


class TooLarge(LoraflipError, ValueError):
    """LF_E_TOO_LARGE: a message, name, shape or size is over its limit."""


class PinsFull(LoraflipError):
    """LF_E_PINS_FULL: this thread already holds LF_MAX_PINS (14) versions."""


class Stale(LoraflipError):
    """LF_E_STALE: the adapter was dropped (or dropped and re-created)."""


class Unsupported(LoraflipError):
    """LF_E_UNSUPPORTED: not available in this build or on this machine."""


class PermissionDenied(LoraflipError, PermissionError):
    """LF_E_PERMISSION: the operating system refused access."""

    def __init__(self, code: int, message: str):
        LoraflipError.__init__(self, code, message)

    def __str__(self) -> str:
        return LoraflipError.__str__(self)


class DeviceLost(LoraflipError):
    """LF_E_DEVICE: the GPU's context failed for good (a sticky CUDA error); restart the
    process."""


class ReleasedError(LoraflipError):
    """A view (array, tensor, writer) was used after its version was released or its write
    ended. The memory behind it may already hold another version, so nothing is returned."""

    def __init__(self, message: str):
        super().__init__(L.LF_E_INVALID_ARGUMENT, message)


class ClosedError(LoraflipError):
    """The Client was closed."""

    def __init__(self, message: str = "the loraflip client is closed"):
        super().__init__(L.LF_E_INVALID_ARGUMENT, message)


_BY_CODE = {
    L.LF_E_INVALID_ARGUMENT: InvalidArgument,
    L.LF_E_NOT_FOUND: NotFound,
    L.LF_E_EXISTS: Exists,
    L.LF_E_ARENA_FULL: ArenaFull,
    L.LF_E_NO_FREE_SLOT: NoFreeSlot,
    L.LF_E_TABLE_FULL: TableFull,
    L.LF_E_PROTOCOL: ProtocolError,
    L.LF_E_PROTOCOL_VERSION: ProtocolError,
    L.LF_E_LAYOUT_MISMATCH: LayoutMismatch,
    L.LF_E_TIMEOUT: Timeout,
    L.LF_E_CONNECTION: DaemonUnreachable,
    L.LF_E_LEASE: LeaseError,
    L.LF_E_VALIDATION: ValidationError,
    L.LF_E_NO_VERSION: NoVersion,
    L.LF_E_TOO_LARGE: TooLarge,
    L.LF_E_PINS_FULL: PinsFull,
    L.LF_E_STALE: Stale,
    L.LF_E_UNSUPPORTED: Unsupported,
    L.LF_E_PERMISSION: PermissionDenied,
    L.LF_E_UNKNOWN_OP: ProtocolError,
    L.LF_E_DEVICE: DeviceLost,
}


def error_for(code: int, message: str) -> LoraflipError:
    """The exception for status `code` (an unknown code gives the base class)."""
    return _BY_CODE.get(code, LoraflipError)(code, message)
