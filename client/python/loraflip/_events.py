"""Flip events: a Watcher reads the daemon's announcements of each adapter's new active version
(FlipEvent) from its PUB socket."""
from __future__ import annotations

import ctypes
import time
from typing import Iterator, NamedTuple, Optional

from . import _lib as L
from ._args import adapter_name, slice_ms
from ._errors import ClosedError, error_for

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
            adapter_name(name)
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
            rc = L.lf_events_next_event(self._handle, slice_ms(deadline), ctypes.byref(e))
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
