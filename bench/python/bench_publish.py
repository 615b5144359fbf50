#!/usr/bin/env python3
"""Publish of a 32 MiB PEFT-named adapter through loraflip, against the save-to-/dev/shm
workaround, in the same run.

The adapter: a 7B model's q/k/v/o (hidden 4096, 32 layers) at r=16 in fp16, named as PEFT's
get_peft_model_state_dict names them: 256 tensors, 32 MiB.

  loraflip:   Client.publish(name, state_dict) (begin, copy into the daemon's slot, commit:
              validate + flip), then a reader acquires the new version and releases it. The
              reader reads in place: nothing more to copy.
  workaround: safetensors.numpy.save_file to /dev/shm, load_file, copy every tensor into the
              reader's own preallocated buffers.

usage: bench_publish.py [--runtime-dir DIR] [--repeat N]   (starts its own loraflipd otherwise)
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "client" / "python"))
import loraflip  # noqa: E402

HIDDEN, LAYERS, RANK = 4096, 32, 16
MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")


def state_dict(seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for layer in range(LAYERS):
        for m in MODULES:
            p = f"base_model.model.model.layers.{layer}.self_attn.{m}"
            out[f"{p}.lora_A.weight"] = rng.standard_normal((RANK, HIDDEN)).astype(np.float16)
            out[f"{p}.lora_B.weight"] = rng.standard_normal((HIDDEN, RANK)).astype(np.float16)
    return out


def start_daemon():
    binary = os.environ.get("LORAFLIPD") or next(
        (str(p) for p in (REPO / "build/daemon/loraflipd", REPO / "builddir/daemon/loraflipd")
         if p.exists()), None) or shutil.which("loraflipd")
    if not binary:
        sys.exit("bench: no loraflipd (set LORAFLIPD or build with meson)")
    instance = f"bench-py-{os.getpid()}-{uuid.uuid4().hex[:4]}"
    root = tempfile.mkdtemp(prefix="loraflip-bench-", dir="/tmp")
    run = os.path.join(root, "run")
    proc = subprocess.Popen([binary, "--instance", instance, "--runtime-dir", run,
                             "--arena-size", "512M", "--log-level", "warn"])
    deadline = time.monotonic() + 10
    while not os.path.exists(os.path.join(run, "control")):
        if proc.poll() is not None or time.monotonic() > deadline:
            sys.exit("bench: loraflipd did not start")
        time.sleep(0.01)

    def stop():
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
        subprocess.run([binary, "--instance", instance, "--remove-arena"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(root, ignore_errors=True)

    return run, stop


# The two loraflip rows: with the daemon's default finite check, and with no commit checks.
VARIANTS = {"default": {}, "no checks": {"check_finite": False}}


def time_loraflip(client, sds, repeat):
    """Both loraflip rows, interleaved repetition by repetition so that the machine's load
    changes hit both alike. Besides the end-to-end times, the daemon's own counters (info:
    write_ns_total, check_ns_total) split each publish into the writer's copies and the
    daemon's checks before the flip."""
    config = {"r": RANK, "lora_alpha": 32, "target_modules": list(MODULES)}
    names = {label: "bench-" + uuid.uuid4().hex[:6] for label in VARIANTS}
    for label, flags in VARIANTS.items():
        client.publish(names[label], sds[0], config=config, **flags)  # creates the adapter
    times = {label: [] for label in VARIANTS}
    split = {label: {"write": [], "check": []} for label in VARIANTS}
    for i in range(repeat):
        sd = sds[i % len(sds)]
        for label, flags in VARIANTS.items():
            name = names[label]
            before = client.info(name)["counters"]
            t0 = time.perf_counter()
            v = client.publish(name, sd, **flags)
            with client.acquire(name, min_version=v) as snap:  # visible to a reader
                assert snap.version == v
            times[label].append(time.perf_counter() - t0)
            after = client.info(name)["counters"]
            for part in ("write", "check"):
                key = part + "_ns_total"
                split[label][part].append((after[key] - before[key]) / 1e9)
    # Correctness, outside the timing: the reader sees exactly what was published.
    for name in names.values():
        with client.acquire(name) as snap:
            sd = sds[(repeat - 1) % len(sds)]
            assert all(np.array_equal(snap[k], a) for k, a in sd.items())
        client.drop(name)
    return times, split


def time_workaround(sds, repeat):
    from safetensors.numpy import load_file, save_file
    path = f"/dev/shm/loraflip-bench-{os.getpid()}.safetensors"
    reader_buffers = {k: np.empty_like(a) for k, a in sds[0].items()}
    times = []
    try:
        for i in range(repeat):
            sd = sds[i % len(sds)]
            t0 = time.perf_counter()
            save_file(sd, path)
            loaded = load_file(path)
            for k, a in loaded.items():
                np.copyto(reader_buffers[k], a)
            times.append(time.perf_counter() - t0)
        assert all(np.array_equal(reader_buffers[k], a) for k, a in sds[(repeat - 1) % len(sds)].items())
    finally:
        if os.path.exists(path):
            os.unlink(path)
    return times


def fmt(ts):
    ms = sorted(t * 1e3 for t in ts)
    return f"median {statistics.median(ms):7.2f} ms  min {ms[0]:7.2f} ms  max {ms[-1]:7.2f} ms"


def main() -> int:
    ap = argparse.ArgumentParser(description="loraflip publish vs safetensors in /dev/shm")
    ap.add_argument("--runtime-dir")
    ap.add_argument("--repeat", type=int, default=30)
    args = ap.parse_args()
    sds = [state_dict(0), state_dict(1)]
    nbytes = sum(a.nbytes for a in sds[0].values())
    print(f"adapter: {len(sds[0])} tensors, {nbytes / 2**20:.1f} MiB fp16 (7B q/k/v/o, r={RANK})")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"numpy {np.__version__}")
    run, stop = (args.runtime_dir, None) if args.runtime_dir else start_daemon()
    try:
        client = loraflip.Client(run)
        memcpy = []
        dst = {k: np.empty_like(a) for k, a in sds[0].items()}
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            for k, a in sds[0].items():
                np.copyto(dst[k], a)
            memcpy.append(time.perf_counter() - t0)
        lf, split = time_loraflip(client, sds, args.repeat)
        lf_checked, lf_plain = lf["default"], lf["no checks"]
        shm = time_workaround(sds, args.repeat)
        client.close()
    finally:
        if stop:
            stop()
    print(f"plain copy of the bytes (numpy):         {fmt(memcpy)}")
    print(f"loraflip publish (check_finite, default): {fmt(lf_checked)}")
    print(f"loraflip publish (no checks):             {fmt(lf_plain)}")
    print(f"safetensors via /dev/shm + copy:          {fmt(shm)}")
    m = statistics.median
    for label in VARIANTS:
        print(f"  {label + ':':10} the writer's copies {m(split[label]['write']) * 1e3:5.2f} ms, "
              f"the daemon's checks {m(split[label]['check']) * 1e3:5.2f} ms (medians, daemon's counters)")
    print(f"ratio (workaround / loraflip default):   {m(shm) / m(lf_checked):.1f}x")
    print(f"ratio (workaround / loraflip no checks): {m(shm) / m(lf_plain):.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
