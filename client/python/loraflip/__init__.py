"""loraflip: publish LoRA adapters into a loraflipd's shared memory and read them in place.

    import loraflip
    c = loraflip.Client("/run/loraflip/default")           # or Client() for the default
    v = c.publish("policy", get_peft_model_state_dict(model), config=lora_config)
    with c.acquire("policy") as snap:                       # pins the active version
        a = snap["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"]
        t = torch.from_dlpack(snap.tensor(name))           # zero copy, bf16 included

The module-level functions (publish, acquire, wait, ...) use one Client per process, opened
on first use from $LORAFLIP_RUNTIME_DIR (or the default instance); `connect(dir)` sets it.
"""
from __future__ import annotations

import os
import threading
from typing import Optional

from . import _lib
from ._client import Client
from ._dtypes import dtype_code, dtype_name
from ._errors import (ArenaFull, ClosedError, DaemonUnreachable, DeviceLost, Exists,
                      InvalidArgument,
                      LayoutMismatch, LeaseError, LoraflipError, NoFreeSlot, NotFound,
                      NoVersion, PermissionDenied, PinsFull, ProtocolError, ReleasedError,
                      Stale, TableFull, Timeout, TooLarge, Unsupported, ValidationError)
from ._events import FlipEvent, Watcher
from ._lib import LibraryNotFound
from ._reading import Tensor, Version
from ._safetensors import RawTensor
from ._views import PinnedArray
from ._writer import Writer

__version__ = "0.1.0"
library_path = _lib.path

__all__ = [
    "Client", "Version", "Writer", "Tensor", "Watcher", "FlipEvent", "PinnedArray", "RawTensor",
    "connect", "default_client", "publish", "publish_file", "export", "write", "create",
    "acquire", "wait", "watch", "list", "info", "stats", "rollback", "drop", "active_version",
    "dtype_code", "dtype_name", "library_path",
    "LoraflipError", "InvalidArgument", "NotFound", "Exists", "ArenaFull", "NoFreeSlot",
    "TableFull", "ProtocolError", "LayoutMismatch", "Timeout", "DaemonUnreachable",
    "LeaseError", "ValidationError", "NoVersion", "TooLarge", "PinsFull", "Stale",
    "Unsupported", "PermissionDenied", "DeviceLost", "ReleasedError", "ClosedError",
    "LibraryNotFound",
]

_default: Optional[Client] = None
_default_lock = threading.Lock()


def connect(runtime_dir: Optional[str] = None, timeout_ms: int = 5000) -> Client:
    """Opens the process's default client (closing a previous one) and returns it."""
    global _default
    with _default_lock:
        if _default is not None and _default._pid == os.getpid():
            _default.close()
        _default = Client(runtime_dir, timeout_ms)
        return _default


def default_client() -> Client:
    """The process's default client, opened on first use (a forked child opens its own)."""
    global _default
    with _default_lock:
        if _default is None or _default.closed or _default._pid != os.getpid():
            _default = Client()
        return _default


def publish(name, tensors, config=None, **kwargs) -> int:
    return default_client().publish(name, tensors, config, **kwargs)


def publish_file(name, path, config=None, **kwargs) -> int:
    return default_client().publish_file(name, path, config, **kwargs)


def export(name, path, version=None):
    return default_client().export(name, path, version)


def write(name, **kwargs) -> Writer:
    return default_client().write(name, **kwargs)


def create(name, tensors, config=None, **kwargs) -> None:
    return default_client().create(name, tensors, config, **kwargs)


def acquire(name, min_version=None, *, version=None):
    return default_client().acquire(name, min_version, version=version)


def wait(name, newer_than=0, timeout=None) -> int:
    return default_client().wait(name, newer_than, timeout)


def watch(name=None, timeout=None) -> Watcher:
    return default_client().watch(name, timeout)


def list():  # noqa: A001 - the issue names it list()
    return default_client().list()


def info(name) -> dict:
    return default_client().info(name)


def stats() -> dict:
    return default_client().stats()


def rollback(name, version) -> None:
    return default_client().rollback(name, version)


def drop(name) -> None:
    return default_client().drop(name)


def active_version(name) -> int:
    return default_client().active_version(name)


for _f in (publish, publish_file, export, write, create, acquire, wait, watch, list, info,
           stats, rollback, drop, active_version):
    _f.__doc__ = getattr(Client, _f.__name__).__doc__
del _f
