"""Python arguments turned into what the C calls take: names as bytes (adapter names checked
first), device ordinals, placements, and the timeout of each slice of a blocking wait."""
from __future__ import annotations

import math
import re
import time
from typing import Optional

from . import _lib as L
from ._errors import InvalidArgument

_ADAPTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,126}$")
# The longest single wait in C of a blocking call: the C calls cannot be interrupted, and short
# slices keep Ctrl-C working.
SLICE_MS = 200


def slice_ms(deadline: Optional[float]) -> int:
    """The next slice of a wait that ends at `deadline` (time.monotonic(); None: never), in ms.
    Rounded up: a slice rounded down would turn the last part of a wait (or all of a wait
    under 1 ms) into a poll that gives up before the deadline."""
    if deadline is None:
        return SLICE_MS
    return max(0, min(SLICE_MS, math.ceil((deadline - time.monotonic()) * 1000)))


def name_bytes(s: str) -> bytes:
    if not isinstance(s, str):
        raise InvalidArgument(L.LF_E_INVALID_ARGUMENT, f"a name must be a str, not {type(s).__name__}")
    return s.encode()


def adapter_name(name) -> bytes:
    if not isinstance(name, str) or not _ADAPTER_NAME.match(name):
        raise InvalidArgument(L.LF_E_INVALID_ARGUMENT,
                              f"bad adapter name {name!r}: 1-127 of [A-Za-z0-9._:-], starting "
                              "with a letter or digit")
    return name.encode()


def device_ordinal(device) -> int:
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


def placement_bytes(placement) -> bytes:
    if not isinstance(placement, str):
        raise InvalidArgument(L.LF_E_INVALID_ARGUMENT,
                              f"placement must be a str ('host', 'cuda:0', 'cuda:0,1'), not "
                              f"{type(placement).__name__}")
    return placement.encode()
