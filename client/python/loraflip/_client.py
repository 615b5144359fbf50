"""The Client: control requests, writes and reads of one loraflipd instance."""
from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

from . import _lib as L
from . import _safetensors as st
from ._args import adapter_name, name_bytes, placement_bytes, slice_ms
from ._dtypes import dtype_code
from ._errors import (ClosedError, DaemonUnreachable, InvalidArgument, LeaseError,
                      LoraflipError, NotFound, Stale, Timeout, error_for)
from ._events import Watcher
from ._peft_config import lora_config, peft_config
from ._reading import Acquire, Pin, Reader, Version
from ._sources import source
from ._writer import Writer

_NO_FREE_SLOT_RETRY_S = 10.0
# How long publish() keeps asking for the outcome of a commit that went unanswered (the
# daemon restarting under systemd, or slow): a few restarts' worth.
_COMMIT_OUTCOME_RETRY_S = 10.0
_log = logging.getLogger("loraflip")


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
        self._readers: list[Reader] = []
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
        return self._json(L.lf_client_info, adapter_name(name))

    def stats(self) -> dict:
        return self._json(L.lf_client_stats)

    def rollback(self, name: str, version: int) -> None:
        """Makes an earlier, still-kept version active again."""
        bname = adapter_name(name)
        with self._use() as h:
            rc = L.lf_client_rollback(h, bname, int(version))
            if rc != L.LF_OK:
                raise self._fail(rc)

    def drop(self, name: str) -> None:
        """Drops the adapter. The name is free at once (a later publish creates it anew);
        acquires on threads that used it raise loraflip.Stale. Its memory, and its entry in
        the daemon's adapter table, return once no reader pins it and no write holds it: until
        then the entry counts against --max-adapters (a create may raise TableFull)."""
        bname = adapter_name(name)
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
        bname = adapter_name(name)
        bplacement = placement_bytes(placement) if placement is not None else None
        if not isinstance(tensors, Mapping) or not tensors:
            raise InvalidArgument(L.LF_E_INVALID_ARGUMENT, "tensors must be a non-empty dict")
        lora = lora_config(config) if config is not None else None
        spec = L.lf_spec_p()
        rc = L.lf_spec_new(ctypes.byref(spec))
        if rc != L.LF_OK:
            raise error_for(rc, "lf_spec_new failed")
        try:
            for tname, t in tensors.items():
                if isinstance(t, tuple) and len(t) == 2 and not hasattr(t, "dtype"):
                    d, shape = dtype_code(t[0]), tuple(int(s) for s in t[1])
                else:
                    src = source(tname, t, None, False)
                    d, shape = src.dtype, src.shape
                if len(shape) > L.LF_MAX_DIMS:
                    raise InvalidArgument(L.LF_E_INVALID_ARGUMENT,
                                          f"tensor '{tname}' has {len(shape)} dims (max {L.LF_MAX_DIMS})")
                arr = (ctypes.c_int64 * max(len(shape), 1))(*shape)
                rc = L.lf_spec_add_tensor(spec, name_bytes(tname), d, len(shape), arr)
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
        adapter_name(name)
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
                placement: Optional[str] = None,
                commit_retry_s: float = _COMMIT_OUTCOME_RETRY_S) -> int:
        """Publishes a full set of tensors (a dict as PEFT's get_peft_model_state_dict returns
        it, of numpy arrays or torch tensors) as the next version; returns that version.
        A commit left unanswered (the daemon restarting or frozen) is asked again for up to
        `commit_retry_s` seconds, then raises loraflip.Timeout or DaemonUnreachable (whether
        the daemon took the commit before it went quiet is then unknown; a later publish makes
        a newer version either way); a free slot is waited for up to `retry_s`.
        Creates the adapter on first use from the shapes, `config` (r, lora_alpha,
        target_modules: a dict or a LoraConfig) and `placement` (see create; an existing
        adapter placed elsewhere is refused). Into a device-placed adapter, numpy arrays are
        copied host to device and torch CUDA tensors device to device on their current
        stream. Every check runs before the slot is touched: a bad input raises and changes
        nothing."""
        self._handle_or_raise()
        adapter_name(name)
        if not isinstance(tensors, Mapping) or not tensors:
            raise InvalidArgument(L.LF_E_INVALID_ARGUMENT, "tensors must be a non-empty dict")
        if placement is not None:
            placement_bytes(placement)
        created = False
        try:
            schema = self._schema(name)
        except NotFound:
            if config is None:
                raise NotFound(L.LF_E_NOT_FOUND,
                               f"no adapter '{name}': pass config=(r, lora_alpha, target_modules) "
                               "to create it from these tensors") from None
            self._check_rank(tensors, lora_config(config)["r"])
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
        sources = [(schema[t][0], source(t, tensors[t], (schema[t][2], schema[t][1]), cast))
                   for t in schema]
        deadline = time.monotonic() + commit_retry_s
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
            w._copy_all(sources)  # the C side checks each size against the slot's
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
        want = lora_config(config)
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
            (p / "adapter_config.json").write_text(json.dumps(peft_config(info), indent=2))
        return target if target is p else p

    # ---- reads ----
    def _reader(self) -> Reader:
        r = getattr(self._local, "reader", None)
        if r is None or r.handle is None:
            self._handle_or_raise()
            r = Reader(self._dir)
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
        pin = Pin(r, handle, name, L.lf_pin_version(handle), schema)
        r.live.add(pin)
        return Version(pin)

    def acquire(self, name: str, min_version: Optional[int] = None, *,
                version: Optional[int] = None) -> Acquire:
        """Pins the active version (if >= min_version; else the newest kept one that is), or
        exactly `version`. Use as `with client.acquire(name) as v: v[tensor]`. Acquire and
        release touch shared memory only. Release only after the work reading it is done.
        An adapter dropped since this thread last read it raises loraflip.Stale, as the C API
        does (LF_E_STALE); a name this thread never saw raises NotFound; an adapter created
        again under the name is acquired."""
        if version is not None:
            return Acquire(self, name, version, True)
        return Acquire(self, name, min_version, False)

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
            rc = L.lf_reader_wait(r.handle, ref, int(newer_than), slice_ms(deadline),
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

