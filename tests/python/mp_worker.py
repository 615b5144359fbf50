"""A writer or reader process for test_multiprocess.py.

usage: mp_worker.py writer RUNTIME_DIR NAME VERSIONS
       mp_worker.py reader RUNTIME_DIR NAME UNTIL_VERSION

Word i of tensor t in version v holds pattern(v, t, i): distinct per version and position, so
a byte from any other version, or from a half-written slot, is caught. The writer alternates
in-place writes (Client.write) and publish(); the daemon's versions equal the commit count,
so the writer knows each version's number before it commits."""
from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "client" / "python"))
import loraflip  # noqa: E402

TENSORS = [f"base_model.model.model.layers.{l}.self_attn.{m}.lora_{ab}.weight"
           for l in range(2) for m in ("q_proj", "v_proj") for ab in "AB"]
WORDS = 8192  # per tensor: 64 KiB
MASK = (1 << 64) - 1


def pattern(version: int, t: int) -> np.ndarray:
    i = np.arange(WORDS, dtype=np.uint64) + np.uint64(t * WORDS)
    a = np.uint64((version * 0x9E3779B97F4A7C15) & MASK)
    return (i * np.uint64(0xC2B2AE3D27D4EB4F)) ^ a ^ np.uint64(version)


def writer(runtime_dir: str, name: str, versions: int) -> int:
    c = loraflip.Client(runtime_dir)
    shapes = {t: (WORDS // 16, 16) for t in TENSORS}
    c.create(name, {t: ("i64", s) for t, s in shapes.items()},
             {"r": 16, "lora_alpha": 32, "target_modules": ["q_proj", "v_proj"]})
    for v in range(1, versions + 1):
        if v % 2:
            with c.write(name, checksum=v % 4 == 1) as w:
                for k, t in enumerate(TENSORS):
                    w[t][...] = pattern(v, k).view(np.int64).reshape(shapes[t])
            got = w.version
        else:
            got = c.publish(name, {t: pattern(v, k).view(np.int64).reshape(shapes[t])
                                   for k, t in enumerate(TENSORS)})
        if got != v:
            print(f"writer: expected version {v}, got {got}", file=sys.stderr)
            return 1
        time.sleep(random.random() * 0.002)
    c.close()
    return 0


def reader(runtime_dir: str, name: str, until: int) -> int:
    c = loraflip.Client(runtime_dir)
    deadline = time.monotonic() + 30
    while True:
        try:
            c.wait(name, 0, timeout=0.05)
            break
        except (loraflip.NotFound, loraflip.Timeout):
            if time.monotonic() > deadline:
                raise
    expected: dict[int, list[np.ndarray]] = {}
    seen, steps, torn, regressions, last = set(), 0, 0, 0, 0
    while last < until and time.monotonic() < deadline:
        with c.acquire(name) as snap:
            v = snap.version
            want = expected.get(v) or [pattern(v, k).view(np.int64) for k in range(len(TENSORS))]
            expected = {v: want}
            for k, t in enumerate(TENSORS):
                torn += int(np.count_nonzero(snap[t].reshape(-1) != want[k]))
            if random.random() < 0.3:
                time.sleep(random.random() * 0.003)  # hold the pin a while: slot pressure
            # Read again at the end of the pin: nothing may have changed under it.
            for k, t in enumerate(TENSORS):
                torn += int(np.count_nonzero(snap[t].reshape(-1) != want[k]))
        regressions += v < last
        last = max(last, v)
        seen.add(v)
        steps += 1
    c.close()
    print(json.dumps({"steps": steps, "versions_seen": len(seen), "last": last, "torn": torn,
                      "regressions": regressions}))
    return 0 if torn == 0 and regressions == 0 and last >= until else 1


if __name__ == "__main__":
    role, runtime_dir, name, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    sys.exit(writer(runtime_dir, name, n) if role == "writer" else reader(runtime_dir, name, n))
