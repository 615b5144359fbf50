#!/usr/bin/env python3
"""One weight sync of a 7B-shaped LoRA adapter from a training model to a generation model, in
torch, through loraflip and through the path TRL's trainers take today, in the same run.

The adapter: a 7B model's q/k/v/o (hidden 4096, 32 layers) at r=16 in bf16: 256 tensors,
32 MiB. Both models are PEFT models over a skeleton of that shape (base weights allocated but
never touched: only the adapters matter here).

  loraflip:  trainer side what loraflip.trainer.PublishCallback does: the adapter's tensors
             (loraflip.peft.AdapterTensors, get_peft_model_state_dict without its walk of the
             model) published with Client.publish; generation side
             loraflip.peft.LiveModel.step(): the model's lora_A/lora_B now read the new
             version's tensors in place.
  /dev/shm:  trainer side PeftModel.save_pretrained to /dev/shm (adapter_model.safetensors
             and its config); generation side loads the folder's safetensors and
             set_peft_model_state_dict copies them into the model, as an engine loads a
             LoRA adapter from a path.

Each row times the whole sync, from the training model's weights to the generation model's,
repetition by repetition interleaved so that load changes hit both alike; the loraflip rows
also time each side alone.

usage: bench_sync.py [--runtime-dir DIR] [--repeat N] [--layers N] [--busy N]   (starts its own
       loraflipd otherwise; --busy keeps N cores busy with spinning processes while it times)
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "client" / "python"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import loraflip  # noqa: E402
import loraflip.peft  # noqa: E402
from bench_publish import fmt, start_daemon  # noqa: E402

HIDDEN, RANK = 4096, 16
MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")


class Attention(torch.nn.Module):
    def __init__(self):
        super().__init__()
        for m in MODULES:
            setattr(self, m, torch.nn.Linear(HIDDEN, HIDDEN, bias=False))


class Layer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.self_attn = Attention()


class Skeleton(torch.nn.Module):
    """model.layers.N.self_attn.{q,k,v,o}_proj, as a Llama names them; never run."""

    def __init__(self, layers: int):
        super().__init__()
        self.model = torch.nn.Module()
        self.model.layers = torch.nn.ModuleList(Layer() for _ in range(layers))


def peft_skeleton(layers: int, seed: int):
    with torch.device("meta"):
        base = Skeleton(layers)
    model = get_peft_model(base, LoraConfig(r=RANK, lora_alpha=32, target_modules=list(MODULES)))
    # Real memory for the adapter only: the base weights stay on the meta device.
    g = torch.Generator().manual_seed(seed)
    for name, module in model.named_modules():
        if (".lora_A." in name or ".lora_B." in name) and isinstance(module, torch.nn.Linear):
            weight = torch.randn(module.weight.shape, generator=g) * 0.02
            module.weight = torch.nn.Parameter(weight.to(torch.bfloat16))
    return model


def time_parts(trainer_model, adapter_tensors, repeat):
    """What the sync avoids, timed apart: PEFT's state dict walk against reading the paired
    parameters, and a DLPack export per tensor against one export sliced into views."""
    out = {"get_peft_model_state_dict(model)": [], "AdapterTensors() (what publish reads)": [],
           "a DLPack export per tensor (256)": [], "Version.torch_tensors() (one export)": []}
    run, stop = start_daemon()
    try:
        client = loraflip.Client(run)
        client.publish("parts", adapter_tensors(), config=trainer_model.peft_config["default"],
                       check_finite=False)
        with client.acquire("parts") as version:
            for _ in range(repeat):
                for label, work in (
                        ("get_peft_model_state_dict(model)",
                         lambda: get_peft_model_state_dict(trainer_model)),
                        ("AdapterTensors() (what publish reads)", adapter_tensors),
                        ("a DLPack export per tensor (256)",
                         lambda: [torch.from_dlpack(version.tensor(t)) for t in version]),
                        ("Version.torch_tensors() (one export)", version.torch_tensors)):
                    t0 = time.perf_counter()
                    work()
                    out[label].append(time.perf_counter() - t0)
        client.close()
    finally:
        stop()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description="one LoRA weight sync: loraflip vs /dev/shm")
    ap.add_argument("--runtime-dir")
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--busy", type=int, default=0,
                    help="processes that keep a core busy meanwhile (a trainer's data loaders)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    trainer_model = peft_skeleton(args.layers, seed=1)
    config = trainer_model.peft_config["default"]
    adapter_tensors = loraflip.peft.AdapterTensors(trainer_model)
    state = get_peft_model_state_dict(trainer_model)
    nbytes = sum(t.numel() * t.element_size() for t in state.values())
    print(f"adapter: {len(state)} tensors, {nbytes / 2**20:.1f} MiB bf16 "
          f"({args.layers} layers, q/k/v/o, hidden {HIDDEN}, r={RANK})")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"torch {torch.__version__}")

    run, stop = (args.runtime_dir, None) if args.runtime_dir else start_daemon()
    shm_dir = tempfile.mkdtemp(prefix="loraflip-bench-sync-", dir="/dev/shm")
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                for _ in range(args.busy)]
    if spinners:
        print(f"busy: {len(spinners)} process(es) spinning on a core meanwhile")
    try:
        client = loraflip.Client(run)
        names = {"default": "sync-checked", "no checks": "sync-plain"}
        flags = {"default": {}, "no checks": {"check_finite": False}}
        # One generation model per row, each following its adapter; the /dev/shm row loads
        # into another.
        lives = {}
        for label, name in names.items():
            client.publish(name, state, config=config, **flags[label])
            lives[label] = loraflip.peft.LiveModel(peft_skeleton(args.layers, seed=2), name,
                                                   client=client)
            with lives[label].step():
                pass  # the first step reads the adapter's config: not part of a sync
        generation_model = peft_skeleton(args.layers, seed=2)
        times = {label: [] for label in names}
        publish = {label: [] for label in names}
        bind = {label: [] for label in names}
        # The daemon's own counters split each publish: begin_write to the commit request (the
        # writer's copies and the Python side around them), and the checks before the flip.
        split = {label: {"write": [], "check": []} for label in names}
        shm = []
        for i in range(args.repeat):
            for p in trainer_model.parameters():  # a training step changed the weights
                if p.dtype == torch.bfloat16:
                    p.data[0, 0] = float(i)
            for label, name in names.items():
                before = client.info(name)["counters"]
                t0 = time.perf_counter()
                version = client.publish(name, adapter_tensors(), **flags[label])
                t1 = time.perf_counter()
                with lives[label].step() as used:
                    t2 = time.perf_counter()
                    assert used == version
                times[label].append(t2 - t0)
                publish[label].append(t1 - t0)
                bind[label].append(t2 - t1)
                after = client.info(name)["counters"]
                for part in ("write", "check"):
                    key = part + "_ns_total"
                    split[label][part].append((after[key] - before[key]) / 1e9)
            t0 = time.perf_counter()
            trainer_model.save_pretrained(shm_dir)
            loaded = load_file(os.path.join(shm_dir, "adapter_model.safetensors"))
            set_peft_model_state_dict(generation_model, loaded)
            shm.append(time.perf_counter() - t0)
        # Correctness, outside the timing: each generation model now holds the trainer's weights.
        want = get_peft_model_state_dict(trainer_model)
        for live in lives.values():
            with live.step():
                got = get_peft_model_state_dict(live.model)
                assert all(torch.equal(got[k], w) for k, w in want.items())
        got = get_peft_model_state_dict(generation_model)
        assert all(torch.equal(got[k], w) for k, w in want.items())
        client.close()
    finally:
        for p in spinners:
            p.kill()
            p.wait()
        shutil.rmtree(shm_dir, ignore_errors=True)
        if stop:
            stop()
    m = statistics.median
    parts = time_parts(trainer_model, adapter_tensors, args.repeat)
    print(f"loraflip sync (check_finite, default):  {fmt(times['default'])}")
    print(f"loraflip sync (no checks):              {fmt(times['no checks'])}")
    print(f"/dev/shm save_pretrained + load + copy: {fmt(shm)}")
    for label in names:
        print(f"  loraflip {label + ':':11} publish {m(publish[label]) * 1e3:6.2f} ms, "
              f"step bind {m(bind[label]) * 1e3:6.2f} ms (medians)")
        print(f"    of the publish, by the daemon's counters: begin to commit "
              f"{m(split[label]['write']) * 1e3:5.2f} ms, the daemon's checks "
              f"{m(split[label]['check']) * 1e3:5.2f} ms (medians)")
    print("parts, measured apart:")
    for label, ts in parts.items():
        print(f"  {label:44} {fmt(ts)}")
    print(f"ratio (/dev/shm / loraflip default):   {m(shm) / m(times['default']):.1f}x")
    print(f"ratio (/dev/shm / loraflip no checks): {m(shm) / m(times['no checks']):.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
