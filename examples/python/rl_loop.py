#!/usr/bin/env python3
"""An online-RL-shaped loop on loraflip: a trainer process updates a LoRA adapter every step
and a generation process runs the LoRA-adapted forward pass with whatever version is active.

    python3 examples/python/rl_loop.py                   # starts its own loraflipd
    python3 examples/python/rl_loop.py --runtime-dir DIR # uses a running one

The model: two layers, each with q_proj and v_proj linear maps W0 (frozen, 64x64) adapted by
LoRA (r=8, alpha=16): y = W0 x + (alpha/r) B (A x). The trainer takes gradient steps on A and B
toward a hidden low-rank target (the loss falls step by step) and publishes them under PEFT's
names; each publish is one version. The generation loop pins the active version at each step,
runs the adapted forward pass on an evaluation batch, checksums every byte it used and
releases; it logs the version each step used and how long after the daemon's flip it was
first picked up. At the end the checksums are compared with the trainer's (torn reads) and a
summary is printed. Exits 1 on any torn read or failed process.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
import zlib
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "client" / "python"))
import loraflip  # noqa: E402

ADAPTER = "policy"
LAYERS, HIDDEN, RANK, ALPHA = 2, 64, 8, 16.0
SCALE = ALPHA / RANK
MODULES = ("q_proj", "v_proj")
MAX_VERSIONS = 100000


def module_names():
    for layer in range(LAYERS):
        for m in MODULES:
            yield f"base_model.model.model.layers.{layer}.self_attn.{m}"


def problem(seed=1234):
    """Frozen base weights and the hidden low-rank targets, the same in both processes."""
    rng = np.random.default_rng(seed)
    base, target = {}, {}
    for p in module_names():
        base[p] = rng.standard_normal((HIDDEN, HIDDEN)).astype(np.float32) / np.sqrt(HIDDEN)
        u = rng.standard_normal((HIDDEN, RANK)).astype(np.float32)
        v = rng.standard_normal((RANK, HIDDEN)).astype(np.float32)
        target[p] = (u @ v / HIDDEN).astype(np.float32)  # the update the adapter should learn
    return base, target


def lora_forward(x, w0, a, b):
    """y = W0 x + scale * B (A x), x: [HIDDEN, batch]."""
    return w0 @ x + SCALE * (b @ (a @ x))


# ---- trainer ----

def trainer(runtime_dir, steps, interval_ms, commit_ns, checksums, published, failed):
    try:
        client = loraflip.Client(runtime_dir)
        base, target = problem()
        rng = np.random.default_rng(7)
        # PEFT's init: A random, B zero, so version 1 is the base model.
        params = {}
        for p in module_names():
            params[f"{p}.lora_A.weight"] = (rng.standard_normal((RANK, HIDDEN)) / np.sqrt(HIDDEN)).astype(np.float32)
            params[f"{p}.lora_B.weight"] = np.zeros((HIDDEN, RANK), np.float32)
        config = {"r": RANK, "lora_alpha": ALPHA, "target_modules": list(MODULES),
                  "task_type": "CAUSAL_LM"}
        lr = 3.0  # plain SGD; tuned so the loss falls ~10x in 60 steps
        for step in range(1, steps + 1):
            x = rng.standard_normal((HIDDEN, 64)).astype(np.float32)
            loss = 0.0
            for p in module_names():
                a, b = params[f"{p}.lora_A.weight"], params[f"{p}.lora_B.weight"]
                ax = a @ x
                err = SCALE * (b @ ax) - target[p] @ x          # prediction minus target delta
                loss += float(np.mean(err ** 2))
                g = 2.0 / err.size * err                         # dLoss/dErr
                grad_b = SCALE * g @ ax.T
                grad_a = SCALE * b.T @ g @ x.T
                params[f"{p}.lora_B.weight"] = (b - lr * grad_b).astype(np.float32)
                params[f"{p}.lora_A.weight"] = (a - lr * grad_a).astype(np.float32)
            version = client.publish(ADAPTER, params, config=config)
            crc = 0
            for t in params.values():
                crc = zlib.crc32(t, crc)
            # When did the flip happen? The daemon stamps each slot just before flipping it.
            slot = next(s for s in client.info(ADAPTER)["slots"] if s["version"] == version)
            if version < MAX_VERSIONS:
                checksums[version] = crc
                commit_ns[version] = slot["committed_unix_ns"]
            published.value = version
            if step == 1 or step % 10 == 0 or step == steps:
                print(f"trainer: step {step:3d} loss {loss / (LAYERS * len(MODULES)):.5f} "
                      f"-> version {version}", flush=True)
            time.sleep(interval_ms / 1000)
        client.close()
    except BaseException as e:
        print(f"trainer: failed: {e!r}", file=sys.stderr, flush=True)
        failed.value = 1
        raise


# ---- generation loop ----

def generator(runtime_dir, step_ms, commit_ns, checksums, published, ready, trainer_done,
              failed, results):
    try:
        client = loraflip.Client(runtime_dir)
        ready.set()
        base, target = problem()
        xeval = np.random.default_rng(99).standard_normal((HIDDEN, 256)).astype(np.float32)
        want = {p: base[p] @ xeval + target[p] @ xeval for p in module_names()}
        names = [f"{p}.lora_{ab}.weight" for p in module_names() for ab in "AB"]
        deadline = time.monotonic() + 30
        while True:  # the trainer creates the adapter with its first publish
            try:
                client.wait(ADAPTER, 0, timeout=0.05)
                break
            except (loraflip.NotFound, loraflip.Timeout):
                if time.monotonic() > deadline:
                    raise
        seen_at: dict[int, int] = {}  # version -> first pickup, unix ns
        crcs: dict[int, int] = {}
        steps, last, final = 0, 0, None
        while True:
            t0 = time.perf_counter()
            with client.acquire(ADAPTER) as snap:
                now_ns = time.time_ns()
                v = snap.version
                loss = 0.0
                for p in module_names():
                    y = lora_forward(xeval, base[p], snap[f"{p}.lora_A.weight"],
                                     snap[f"{p}.lora_B.weight"])
                    loss += float(np.mean((y - want[p]) ** 2))
                crc = 0
                for n in names:  # every byte this step used, while it is still pinned
                    crc = zlib.crc32(snap[n], crc)
            steps += 1
            new = v not in seen_at
            if new:
                seen_at[v] = now_ns
                crcs[v] = crc
            elif crcs[v] != crc:
                crcs[v] = -1  # two reads of one version disagree: torn
            committed = commit_ns[v] if v < MAX_VERSIONS else 0
            if not new:
                lag = "same as the last step"
            elif committed:
                lag = f"new, picked up {(seen_at[v] - committed) / 1e6:5.2f} ms after its commit"
            else:
                lag = "new, commit time not yet recorded"
            print(f"generator: step {steps:4d} used version {v:3d} ({lag}), "
                  f"eval loss {loss / (LAYERS * len(MODULES)):.5f}", flush=True)
            last = max(last, v)
            if trainer_done.is_set():
                final = published.value
                if last >= final:
                    break
            time.sleep(max(0.0, step_ms / 1000 - (time.perf_counter() - t0)))
        client.close()
        torn = sum(1 for v, c in crcs.items() if c == -1 or (v < MAX_VERSIONS and c != checksums[v]))
        lags = [(t - commit_ns[v]) / 1e6 for v, t in seen_at.items() if v < MAX_VERSIONS and commit_ns[v]]
        results.update(steps=steps, versions_seen=len(seen_at), torn=torn,
                       worst_ms=max(lags) if lags else float("nan"),
                       median_ms=float(np.median(lags)) if lags else float("nan"),
                       final_loss=loss / (LAYERS * len(MODULES)))
    except BaseException as e:
        print(f"generator: failed: {e!r}", file=sys.stderr, flush=True)
        failed.value = 1
        raise


# ---- the daemon ----

def find_daemon() -> str:
    env = os.environ.get("LORAFLIPD")
    if env:
        return env
    for build in ("build", "builddir"):
        p = REPO / build / "daemon" / "loraflipd"
        if p.exists():
            return str(p)
    found = shutil.which("loraflipd")
    if found:
        return found
    sys.exit("rl_loop: no loraflipd (build it with meson, set LORAFLIPD, or pass --runtime-dir)")


def start_daemon():
    binary = find_daemon()
    instance = f"rl-loop-{os.getpid()}-{uuid.uuid4().hex[:4]}"
    root = tempfile.mkdtemp(prefix="loraflip-rl-", dir="/tmp")
    runtime_dir = os.path.join(root, "run")
    log = open(os.path.join(root, "daemon.log"), "wb")
    proc = subprocess.Popen([binary, "--instance", instance, "--runtime-dir", runtime_dir,
                             "--arena-size", "64M", "--log-level", "warn"],
                            stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while not os.path.exists(os.path.join(runtime_dir, "control")):
        if proc.poll() is not None or time.monotonic() > deadline:
            sys.exit("rl_loop: loraflipd did not start:\n" + Path(root, "daemon.log").read_text())
        time.sleep(0.01)
    print(f"rl_loop: started loraflipd (pid {proc.pid}, instance {instance}, {runtime_dir})")

    def stop():
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
        subprocess.run([binary, "--instance", instance, "--remove-arena"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(root, ignore_errors=True)
        print(f"rl_loop: loraflipd stopped (exit {rc}), arena removed")
        return rc

    return runtime_dir, stop


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runtime-dir", help="a running loraflipd's runtime directory "
                    "(default: start one)")
    ap.add_argument("--steps", type=int, default=60, help="trainer steps (versions)")
    ap.add_argument("--train-interval-ms", type=float, default=15)
    ap.add_argument("--gen-step-ms", type=float, default=10, help="one generation step")
    args = ap.parse_args()

    runtime_dir, stop = (args.runtime_dir, None) if args.runtime_dir else start_daemon()
    ctx = mp.get_context("spawn")
    commit_ns = ctx.Array("Q", MAX_VERSIONS, lock=False)
    checksums = ctx.Array("q", MAX_VERSIONS, lock=False)
    published = ctx.Value("Q", 0, lock=False)
    failed = ctx.Value("i", 0)
    trainer_done = ctx.Event()
    ready = ctx.Event()
    manager = ctx.Manager()
    results = manager.dict()
    if args.runtime_dir:
        with loraflip.Client(runtime_dir) as c:  # a fresh adapter for this run
            if any(a["name"] == ADAPTER for a in c.list()):
                c.drop(ADAPTER)
    gen = ctx.Process(target=generator, name="generator",
                      args=(runtime_dir, args.gen_step_ms, commit_ns, checksums, published,
                            ready, trainer_done, failed, results))
    tr = ctx.Process(target=trainer, name="trainer",
                     args=(runtime_dir, args.steps, args.train_interval_ms, commit_ns, checksums,
                           published, failed))
    t0 = time.monotonic()
    gen.start()
    ready.wait(timeout=30)  # the generation loop is up before the first version
    tr.start()
    tr.join()
    trainer_done.set()
    gen.join(timeout=60)
    if gen.is_alive():
        gen.terminate()
        gen.join()
        failed.value = 1
    elapsed = time.monotonic() - t0
    r = dict(results)
    manager.shutdown()
    daemon_rc = stop() if stop else 0
    ok = failed.value == 0 and tr.exitcode == 0 and gen.exitcode == 0 and r.get("torn", 1) == 0
    print("\n== summary ==")
    print(f"versions published: {published.value}")
    print(f"generation steps:   {r.get('steps', 0)}")
    print(f"versions seen:      {r.get('versions_seen', 0)}")
    print(f"pickup after commit: median {r.get('median_ms', float('nan')):.2f} ms, "
          f"worst {r.get('worst_ms', float('nan')):.2f} ms (a version flipped mid-step is picked "
          f"up at the next {args.gen_step_ms:g} ms step)")
    print(f"final eval loss:    {r.get('final_loss', float('nan')):.5f}")
    print(f"torn reads:         {r.get('torn', 'unknown')}")
    print(f"elapsed:            {elapsed:.2f} s; trainer exit {tr.exitcode}, generator exit "
          f"{gen.exitcode}, daemon exit {daemon_rc}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
