#!/usr/bin/env python3
"""One weight sync of a 7B-shaped LoRA adapter into vLLM's LoRA model, through loraflip's vLLM
plugin and through the path TRL's trainers take today, in the same run.

The adapter: a 7B model's q/k/v/o (hidden 4096, 32 layers) at r=16, lora_alpha=32, bf16:
256 tensors, 32 MiB, from a PEFT model on the trainer's side (bench_sync.py's skeleton).

  loraflip:  Client.publish of the adapter's tensors (what loraflip.trainer.PublishCallback
             does), then what the plugin does in a vLLM worker for a loraflip:// request: pin
             the version, LoRAModel.from_lora_tensors over the pinned tensors
             (loraflip.vllm.load_version; the config is read once per adapter).
  TRL:       PeftModel.save_pretrained to /dev/shm, then what vLLM's worker does for a path:
             PEFTHelper.from_local_dir and LoRAModel.from_local_checkpoint (device cpu).

Both rows stop where vLLM's _load_adapter returns. The "+ register" rows add the next thing
vLLM does with the model, in add_adapter: _create_merged_loras_inplace (q/k/v packed, the
scaling folded into lora_B; loraflip's model writes it into a pooled buffer, vLLM's own
tensors take it in place). Repetitions are interleaved so load changes hit every row alike.

usage: bench_vllm.py [--repeat N] [--layers N]    (starts its own loraflipd)
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "client" / "python"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import loraflip  # noqa: E402
import loraflip.peft  # noqa: E402
import loraflip.vllm  # noqa: E402
from bench_publish import fmt, start_daemon  # noqa: E402
from bench_sync import HIDDEN, MODULES, RANK, peft_skeleton  # noqa: E402
from peft import get_peft_model_state_dict  # noqa: E402
from vllm.lora import lora_model as vllm_lora_model  # noqa: E402
from vllm.lora import model_manager as vllm_model_manager  # noqa: E402
from vllm.lora.lora_model import LoRAModel  # noqa: E402
from vllm.lora.model_manager import LoRAModelManager  # noqa: E402
from vllm.lora.peft_helper import PEFTHelper  # noqa: E402

EXPECTED = set(MODULES)


def bare_model_manager(layers: int) -> LoRAModelManager:
    """vLLM's model manager without a model (which would need a GPU): the packed q/k/v modules
    of a Llama set by hand, the merging vLLM's own code."""
    m = LoRAModelManager.__new__(LoRAModelManager)
    m.packed_modules = {f"model.layers.{i}.self_attn.qkv_proj":
                        [f"model.layers.{i}.self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj")]
                        for i in range(layers)}
    m.modules, m.is_pooling_model, m.supports_mm = {}, False, False
    m._enable_moe_shared_loras = m._is_non_gated_moe = False
    return m


def main() -> int:
    ap = argparse.ArgumentParser(description="one LoRA sync into vLLM: loraflip vs /dev/shm")
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--layers", type=int, default=32)
    args = ap.parse_args()
    torch.set_num_threads(1)
    # A CPU worker does not pin host memory; vLLM's probe says otherwise on a machine with a
    # CUDA build of torch and no GPU.
    vllm_lora_model.PIN_MEMORY = vllm_model_manager.PIN_MEMORY = False
    trainer_model = peft_skeleton(args.layers, seed=1)
    config = trainer_model.peft_config["default"]
    adapter_tensors = loraflip.peft.AdapterTensors(trainer_model)
    state = get_peft_model_state_dict(trainer_model)
    nbytes = sum(t.numel() * t.element_size() for t in state.values())
    print(f"adapter: {len(state)} tensors, {nbytes / 2**20:.1f} MiB bf16 ({args.layers} layers, "
          f"q/k/v/o, hidden {HIDDEN}, r={RANK}, lora_alpha={config.lora_alpha})")
    import vllm
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}, torch {torch.__version__}, vllm {vllm.__version__}")

    run, stop = start_daemon()
    shm_dir = tempfile.mkdtemp(prefix="loraflip-bench-vllm-", dir="/dev/shm")
    manager = bare_model_manager(args.layers)
    rows = ("loraflip (default)", "loraflip (no checks)", "TRL (/dev/shm)")
    flags = {"loraflip (default)": {}, "loraflip (no checks)": {"check_finite": False}}
    names = {"loraflip (default)": "vllm-checked", "loraflip (no checks)": "vllm-plain"}
    load = {r: [] for r in rows}
    register = {r: [] for r in rows}
    publish = {r: [] for r in flags}
    try:
        client = loraflip.Client(run)
        for row, name in names.items():  # created outside the timing: the first publish only
            client.publish(name, state, config=config, slots=4, history=0, **flags[row])

        def loraflip_sync(row, i):
            t0 = time.perf_counter()
            v = client.publish(names[row], adapter_tensors(), **flags[row])
            t1 = time.perf_counter()
            model = loraflip.vllm.load_version(
                client, names[row], v, lora_model_id=i + 1, max_position_embeddings=4096,
                expected_modules=EXPECTED, dtype=torch.bfloat16)
            publish[row].append(t1 - t0)
            return model

        def trl_sync(row, i):
            trainer_model.save_pretrained(shm_dir)
            helper = PEFTHelper.from_local_dir(shm_dir, 4096)
            return LoRAModel.from_local_checkpoint(shm_dir, EXPECTED, helper, lora_model_id=i + 1,
                                                   device="cpu", dtype=torch.bfloat16)

        models = {}
        for i in range(args.repeat):
            for p in trainer_model.parameters():  # a training step changed the weights
                if p.dtype == torch.bfloat16:
                    p.data[0, 0] = float(i)
            for row in rows:
                models.pop(row, None)  # vLLM dropped the last version: its pin ends
                t0 = time.perf_counter()
                model = trl_sync(row, i) if row.startswith("TRL") else loraflip_sync(row, i)
                t1 = time.perf_counter()
                manager._create_merged_loras_inplace(model)
                t2 = time.perf_counter()
                load[row].append(t1 - t0)
                register[row].append(t2 - t0)
                models[row] = model
        # Correctness, outside the timing: every row's packed model holds the trainer's weights.
        want = get_peft_model_state_dict(trainer_model)
        scaling = config.lora_alpha / RANK
        for row, model in models.items():
            for i in range(args.layers):
                qkv = model.loras[f"model.layers.{i}.self_attn.qkv_proj"]
                prefix = f"base_model.model.model.layers.{i}.self_attn"
                for j, part in enumerate(("q_proj", "k_proj", "v_proj")):
                    assert torch.equal(qkv.lora_a[j], want[f"{prefix}.{part}.lora_A.weight"]), row
                    b = want[f"{prefix}.{part}.lora_B.weight"].clone()
                    b *= scaling
                    assert torch.equal(qkv.lora_b[j], b), row
        models.clear()
        client.close()
    finally:
        shutil.rmtree(shm_dir, ignore_errors=True)
        stop()
    m = statistics.median
    for row in rows:
        print(f"{row + ':':22} to vLLM's LoRAModel     {fmt(load[row])}")
        print(f"{'':22} + register (pack, scale) {fmt(register[row])}")
    for row in flags:
        print(f"  {row}: publish {m(publish[row]) * 1e3:6.2f} ms, pin + convert "
              f"{(m(load[row]) - m(publish[row])) * 1e3:6.2f} ms (medians)")
    trl = "TRL (/dev/shm)"
    for row in flags:
        print(f"ratio (TRL / {row}): to LoRAModel {m(load[trl]) / m(load[row]):.1f}x, "
              f"+ register {m(register[trl]) / m(register[row]):.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
