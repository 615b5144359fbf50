#!/usr/bin/env python3
"""The online-RL hand-off with the tools people already use: a transformers Trainer trains a
LoRA adapter (PEFT) and publishes it every step through loraflip's TrainerCallback, while a
generation process calls `generate()` on a PEFT model whose adapter follows the active version
(loraflip.peft.LiveModel): no files, no reloads, no patched code.

    python3 examples/python/peft_loop.py --runtime-dir DIR   # a running loraflipd's directory

The model is a tiny Llama built from a config (random base weights, the same in both
processes; nothing is downloaded). The trainer teaches it to continue a counting sequence.
Each generation step checksums the adapter bytes its forward passes read, and at the end those
checksums are compared with the trainer's for the same version: a step that saw half of one
version (a torn read) would not match. Exits 1 on any torn read or failed process.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time
import zlib
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is built locally
REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "client" / "python"))

ADAPTER = "policy"
VOCAB, SEQ = 64, 16


def tiny_llama():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)  # the same base weights in both processes
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=64)
    return LlamaForCausalLM(config)


def lora_config():
    from peft import LoraConfig
    return LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                      lora_dropout=0.0)


def adapter_checksum(tensors) -> int:
    """crc32 over the adapter's bytes, in name order (what both processes compute)."""
    crc = 0
    for name in sorted(tensors):
        crc = zlib.crc32(tensors[name].detach().contiguous().view(-1).numpy().tobytes(), crc)
    return crc


# ---- trainer ----

def counting_rows(rows=256):
    """Rows of a counting sequence mod VOCAB from random starts: easy to learn, easy to see."""
    import torch
    g = torch.Generator().manual_seed(1)
    starts = torch.randint(0, VOCAB, (rows, 1), generator=g)
    return (starts + torch.arange(SEQ)) % VOCAB


def trainer(runtime_dir, steps, published):
    import torch
    from peft import get_peft_model, get_peft_model_state_dict
    from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

    import loraflip
    from loraflip.trainer import PublishCallback

    class Rows(torch.utils.data.Dataset):
        def __init__(self):
            self.ids = counting_rows()

        def __len__(self):
            return len(self.ids)

        def __getitem__(self, i):
            return {"input_ids": self.ids[i], "labels": self.ids[i]}

    class Record(TrainerCallback):
        """After the publisher: the checksum of what it published, and the loss."""

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if publisher.published_step == state.global_step:
                published.put(("version", publisher.version,
                               adapter_checksum(get_peft_model_state_dict(model))))

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                print(f"trainer:   step {state.global_step:3d} loss {logs['loss']:.3f} "
                      f"published version {logs.get('loraflip_version', '-')}", flush=True)

    try:
        model = get_peft_model(tiny_llama(), lora_config())
        publisher = PublishCallback(ADAPTER, every=1, client=loraflip.Client(runtime_dir))
        args = TrainingArguments(output_dir=os.path.join(runtime_dir, "..", "trainer-out"),
                                 max_steps=steps, learning_rate=5e-2, per_device_train_batch_size=8,
                                 logging_steps=max(1, steps // 10), save_strategy="no",
                                 report_to=[], use_cpu=True, disable_tqdm=True, seed=0)
        run = Trainer(model=model, args=args, train_dataset=Rows(), callbacks=[publisher, Record()])
        run.remove_callback(PrinterCallback)  # Record prints the lines that matter here
        run.train()
        published.put(("done", publisher.version, 0))
    except BaseException as e:  # the parent reports it
        published.put(("failed", 0, repr(e)))
        raise


# ---- generation ----

def generator(runtime_dir, last_version, results):
    import torch
    from peft import get_peft_model, get_peft_model_state_dict

    import loraflip
    import loraflip.peft

    try:
        client = loraflip.Client(runtime_dir)
        model = get_peft_model(tiny_llama(), lora_config()).eval()
        live = loraflip.peft.LiveModel(model, ADAPTER, client=client, timeout=120)
        prompt = torch.tensor([[10, 11, 12, 13]])
        steps = []
        with torch.no_grad():
            while True:
                with live.step() as version:
                    crc = adapter_checksum(get_peft_model_state_dict(model))
                    out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt),
                                         max_new_tokens=8, do_sample=False, pad_token_id=0)
                behind = client.active_version(ADAPTER) - version
                steps.append((version, crc, behind, out[0, 4:].tolist()))
                if len(steps) % 10 == 1:
                    print(f"generator: step {len(steps):3d} used version {version:3d} "
                          f"({behind} behind at its end): {out[0, 4:].tolist()}", flush=True)
                if last_version.value and version >= last_version.value:
                    break
        live.close()
        results.put(steps)
    except BaseException as e:
        results.put(repr(e))
        raise


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runtime-dir", default=os.environ.get("LORAFLIP_RUNTIME_DIR"),
                        help="the loraflipd to use (default: $LORAFLIP_RUNTIME_DIR)")
    parser.add_argument("--steps", type=int, default=20, help="training steps (one version each)")
    args = parser.parse_args()
    if not args.runtime_dir:
        parser.error("--runtime-dir (or $LORAFLIP_RUNTIME_DIR) names the loraflipd to use")

    ctx = mp.get_context("spawn")  # torch and fork do not mix
    published, results = ctx.Queue(), ctx.Queue()
    last_version = ctx.Value("q", 0)
    started = time.monotonic()
    gen = ctx.Process(target=generator, args=(args.runtime_dir, last_version, results))
    gen.start()
    tr = ctx.Process(target=trainer, args=(args.runtime_dir, args.steps, published))
    tr.start()

    checksums = {}
    while True:
        kind, version, value = published.get()
        if kind == "version":
            checksums[version] = value
            continue
        if kind == "failed":
            print(f"peft_loop: the trainer failed: {value}", file=sys.stderr)
            gen.terminate()
            return 1
        last_version.value = version  # the generator stops once it has used this one
        break
    tr.join()
    steps = results.get()
    gen.join()
    elapsed = time.monotonic() - started
    if isinstance(steps, str):
        print(f"peft_loop: the generator failed: {steps}", file=sys.stderr)
        return 1

    torn = sum(1 for version, crc, _, _ in steps if checksums.get(version) != crc)
    behind = [b for _, _, b, _ in steps]
    print("\n== summary (transformers Trainer + PEFT generate) ==")
    print(f"versions published: {len(checksums)}")
    print(f"generation steps:   {len(steps)}")
    print(f"versions seen:      {len({v for v, _, _, _ in steps})}")
    print(f"staleness:          median {statistics.median(behind):.0f}, max {max(behind)} "
          "versions behind the active one at a step's end")
    print(f"last generation:    prompt [10, 11, 12, 13] -> {steps[-1][3]}")
    print(f"torn reads:         {torn}")
    print(f"elapsed:            {elapsed:.1f} s; trainer exit {tr.exitcode}, generator exit "
          f"{gen.exitcode}")
    return 0 if torn == 0 and tr.exitcode == 0 and gen.exitcode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
