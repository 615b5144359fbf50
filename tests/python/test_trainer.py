"""loraflip.trainer.PublishCallback in a real transformers.Trainer (tiny Llama + LoRA, synthetic
data, CPU): one version per step with the model's bytes, the version in the trainer's logs, and
training that goes on while the daemon is away."""
from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="the Trainer integration needs torch (scripts/setup installs it)")
transformers = pytest.importorskip("transformers", reason="needs transformers (scripts/setup installs it)")

import loraflip  # noqa: E402
import tiny_models as tm  # noqa: E402
from loraflip.trainer import PublishCallback  # noqa: E402
from peft import get_peft_model_state_dict  # noqa: E402
from transformers import Trainer, TrainerCallback, TrainingArguments  # noqa: E402


class TokenRows(torch.utils.data.Dataset):
    """Random token rows, labels = inputs (a causal LM learns to predict them)."""

    def __init__(self, rows: int = 64, length: int = 12):
        g = torch.Generator().manual_seed(7)
        self.ids = torch.randint(3, tm.llama_config().vocab_size, (rows, length), generator=g)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


class ReadBack(TrainerCallback):
    """After each step (and after the publisher, which runs first), reads the active version and
    compares its bytes with the model's LoRA weights at this step."""

    def __init__(self, client, name):
        self.client, self.name, self.seen = client, name, []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        want = get_peft_model_state_dict(model)
        with self.client.acquire(self.name) as v:
            assert set(v) == set(want)
            for t, w in want.items():
                got = torch.from_dlpack(v.tensor(t))
                assert torch.equal(got, w.detach()), f"step {state.global_step}: {t} differs"
            self.seen.append((state.global_step, v.version))


def make_trainer(tmp_path, callbacks, steps: int):
    model = tm.peft_model()
    model.train()
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=steps, learning_rate=5e-3,
                             per_device_train_batch_size=4, logging_steps=1, save_strategy="no",
                             report_to=[], use_cpu=True, disable_tqdm=True, seed=0)
    return Trainer(model=model, args=args, train_dataset=TokenRows(), callbacks=callbacks)


def test_one_version_per_step_with_the_models_bytes(client, tmp_path):
    name = "trainer-steps"
    publisher = PublishCallback(name, every=1, client=client)
    reader = ReadBack(client, name)
    trainer = make_trainer(tmp_path, [publisher, reader], steps=4)
    trainer.train()
    assert reader.seen == [(1, 1), (2, 2), (3, 3), (4, 4)]
    assert client.active_version(name) == 4  # train end: step 4 is published already
    logged = [h["loraflip_version"] for h in trainer.state.log_history if "loss" in h]
    assert logged == [1, 2, 3, 4]
    info = client.info(name)
    assert info["lora"]["rank"] == 8 and info["lora"]["alpha"] == 16


def test_every_n_steps_and_at_the_end(client, tmp_path):
    name = "trainer-every"
    publisher = PublishCallback(name, every=2, client=client)
    trainer = make_trainer(tmp_path, [publisher], steps=5)
    trainer.train()
    # steps 2 and 4, then the end of training (step 5)
    assert client.active_version(name) == 3 and publisher.published_step == 5
    with client.acquire(name) as v:
        want = get_peft_model_state_dict(trainer.model)
        assert all(torch.equal(torch.from_dlpack(v.tensor(t)), w.detach()) for t, w in want.items())


class FreezeDaemonAt(TrainerCallback):
    """Stops the daemon (SIGSTOP) before step `at` and lets it go on (SIGCONT) after it: the
    publisher runs in between, against a daemon that does not answer."""

    def __init__(self, daemon, at: int):
        self.daemon, self.at = daemon, at

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step + 1 == self.at:
            os.kill(self.daemon.proc.pid, signal.SIGSTOP)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.at:
            os.kill(self.daemon.proc.pid, signal.SIGCONT)


def test_a_daemon_away_for_a_step_does_not_stop_training(daemon, tmp_path, caplog):
    name = "trainer-away"
    client = loraflip.Client(daemon.dir, timeout_ms=300)
    publisher = PublishCallback(name, every=1, client=client, timeout=0.3)
    # The freezer runs its on_step_end after the publisher's: the publish of step 2 meets a
    # stopped daemon, gives up, and goes through at step 3.
    trainer = make_trainer(tmp_path, [publisher, FreezeDaemonAt(daemon, 2)], steps=4)
    try:
        with caplog.at_level(logging.WARNING, logger="loraflip"):
            trainer.train()
    finally:
        os.kill(daemon.proc.pid, signal.SIGCONT)
    assert trainer.state.global_step == 4
    assert publisher.failures >= 1, caplog.text
    assert "trying again at the next step" in caplog.text
    assert publisher.published_step == 4
    with client.acquire(name) as v:
        want = get_peft_model_state_dict(trainer.model)
        assert all(torch.equal(torch.from_dlpack(v.tensor(t)), w.detach()) for t, w in want.items())
    client.close()


def test_trl_sft_trainer_publishes_each_step(client, tmp_path):
    """TRL's SFTTrainer (it wraps the model with the LoRA config itself) with the callback."""
    trl = pytest.importorskip("trl", reason="TRL is installed by scripts/setup beside the pinned torch")
    from datasets import Dataset
    name = "trainer-sft"
    g = torch.Generator().manual_seed(3)
    rows = [{"text": " ".join(f"w{int(i)}" for i in torch.randint(3, 128, (10,), generator=g))}
            for _ in range(32)]
    args = trl.SFTConfig(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=4,
                         logging_steps=1, save_strategy="no", report_to=[], use_cpu=True,
                         disable_tqdm=True, learning_rate=5e-3)
    reader = ReadBack(client, name)
    trainer = trl.SFTTrainer(model=tm.base_model(), args=args, train_dataset=Dataset.from_list(rows),
                             processing_class=tm.word_tokenizer(), peft_config=tm.lora_config(),
                             callbacks=[PublishCallback(name, client=client), reader])
    trainer.train()
    assert reader.seen == [(1, 1), (2, 2), (3, 3)]


def test_the_demo_loop_trains_generates_and_never_reads_a_torn_version(daemon):
    """scripts/demo's path with torch: examples/python/peft_loop.py end to end."""
    example = Path(__file__).resolve().parents[2] / "examples" / "python" / "peft_loop.py"
    r = subprocess.run([sys.executable, str(example), "--runtime-dir", daemon.dir,
                        "--steps", "6"], capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "versions published: 6" in r.stdout
    assert "torn reads:         0" in r.stdout
    assert int(re.search(r"versions seen:\s+(\d+)", r.stdout).group(1)) >= 1


def test_only_process_zero_publishes_and_sharded_training_is_refused(client):
    """Under distributed training the other ranks never publish; FSDP and ZeRO-3, which shard
    the adapter, are refused when training begins (before any step)."""
    import types
    from transformers import TrainerControl, TrainerState
    name = "trainer-ranks"
    model = tm.peft_model()
    publisher = PublishCallback(name, client=client)
    other_rank = TrainerState(is_world_process_zero=False)
    other_rank.global_step = 1
    publisher.on_step_end(None, other_rank, TrainerControl(), model=model)
    publisher.on_train_end(None, other_rank, TrainerControl(), model=model)
    with pytest.raises(loraflip.NotFound):
        client.info(name)  # nothing was published, not even the adapter created
    zero = TrainerState(is_world_process_zero=True)
    zero.global_step = 1
    publisher.on_step_end(None, zero, TrainerControl(), model=model)
    assert client.active_version(name) == 1
    with pytest.raises(loraflip.Unsupported, match="FSDP"):
        publisher.on_train_begin(types.SimpleNamespace(fsdp="full_shard"), zero, TrainerControl(),
                                 model=model)
