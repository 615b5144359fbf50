"""Publishes a transformers Trainer's LoRA adapter (TRL's trainers included) as it trains.

    from loraflip.trainer import PublishCallback
    trainer = Trainer(model=peft_model, args=args, train_dataset=ds,
                      callbacks=[PublishCallback("policy", every=1)])

Every `every` optimizer steps (and at the end of training) the callback publishes
`get_peft_model_state_dict(model)` with the model's LoRA config as the next version of the
adapter, and adds the version to the trainer's logs as `loraflip_version`. A daemon that is
briefly away (restarting, frozen, its socket gone) never stalls training: the publish gives up
within about `timeout` seconds, logs a warning, and is tried again at the next step.

Distributed training: only the world's process zero publishes. Data parallel training (DDP,
DeepSpeed ZeRO-1/2) keeps the whole adapter on every rank, so rank 0 publishes its own copy.
Sharded parameters (FSDP, DeepSpeed ZeRO-3) would have to be gathered across ranks first: they
are refused when training begins, with an error that says so.

Needs torch, transformers and peft (`pip install loraflip[torch]`).
"""
from __future__ import annotations

import logging
import time
from typing import Optional

from transformers import TrainerCallback

from . import _lib as L
from ._errors import DaemonUnreachable, LeaseError, NoFreeSlot, Timeout, Unsupported
from .peft import AdapterTensors

__all__ = ["PublishCallback"]

_log = logging.getLogger("loraflip")

# Failures that say the daemon is away or busy right now, not that the publish is wrong: the
# callback tries again at the next step. Any other error (a shape that no longer matches the
# adapter, a bad name) is a bug of the run and stops it.
_TRANSIENT = (DaemonUnreachable, Timeout, LeaseError, NoFreeSlot)


class PublishCallback(TrainerCallback):
    """A transformers.TrainerCallback that publishes the model's LoRA adapter to loraflip.

    name: the loraflip adapter (created on first publish from the model's LoRA config).
    every: publish after every `every` optimizer steps (the trainer's global steps).
    client: a loraflip.Client; default: one opened on process zero from `runtime_dir`
    ($LORAFLIP_RUNTIME_DIR or the default instance) with requests timing out after `timeout`.
    adapter_name: the PEFT adapter to publish (default: the model's active one).
    log_key: the key of the version in the trainer's logs (None: not logged).
    publish_kwargs: passed to Client.publish (placement=, slots=, history=, check_finite=...).
    """

    def __init__(self, name: str, every: int = 1, *, client=None,
                 runtime_dir: Optional[str] = None, adapter_name: Optional[str] = None,
                 timeout: float = 2.0, log_key: Optional[str] = "loraflip_version",
                 **publish_kwargs):
        if every < 1:
            raise ValueError(f"every must be >= 1, not {every}")
        self.name = name
        self.every = int(every)
        self.adapter_name = adapter_name
        self.timeout = float(timeout)
        self.log_key = log_key
        self.publish_kwargs = publish_kwargs
        self.publish_kwargs.setdefault("retry_s", self.timeout)
        self.publish_kwargs.setdefault("commit_retry_s", self.timeout)
        self._client = client
        self._runtime_dir = runtime_dir
        self.version = 0  # the last version published (0: none yet)
        self.published_step = -1  # the global step that version holds
        self.failures = 0  # publishes given up on (tried again at the next step)
        self._due = False
        self._tensors: Optional[AdapterTensors] = None

    # ---- TrainerCallback ----
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        _refuse_sharded(args, model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0:
            self._due = True  # stays due until a publish gets through
        if self._due and state.is_world_process_zero:
            self._publish(model, state.global_step)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if state.is_world_process_zero and self.published_step != state.global_step:
            self._publish(model, state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.log_key is None or not self.version or logs is None:
            return
        logs[self.log_key] = self.version
        # The trainer put its copy of these logs into the history before calling back.
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1][self.log_key] = self.version

    # ---- publishing ----
    def _publish(self, model, step: int) -> None:
        adapter = self.adapter_name or _active_adapter(model)
        if self._tensors is None or self._tensors.model is not model or \
                self._tensors.adapter_name != adapter:
            self._tensors = AdapterTensors(model, adapter)
        tensors = self._tensors()  # get_peft_model_state_dict(model), without its walk
        config = model.peft_config[adapter]
        started = time.monotonic()
        try:
            client = self._open_client()
            self.version = client.publish(self.name, tensors, config, **self.publish_kwargs)
        except _TRANSIENT as e:
            self.failures += 1
            _log.warning("step %d: publishing '%s' gave up after %.1f s (%s); trying again at "
                         "the next step", step, self.name, time.monotonic() - started, e)
            return
        self.published_step = step
        self._due = False

    def _open_client(self):
        if self._client is None:
            import loraflip
            self._client = loraflip.Client(self._runtime_dir,
                                           timeout_ms=max(1, int(self.timeout * 1000)))
        return self._client


def _active_adapter(model) -> str:
    active = getattr(model, "active_adapter", None)
    if callable(active):  # transformers' PEFT integration: a method
        active = active()
    if isinstance(active, (list, tuple)):
        active = active[0] if len(active) == 1 else None
    if not isinstance(active, str):
        configs = getattr(model, "peft_config", None) or {}
        if len(configs) != 1:
            raise Unsupported(L.LF_E_UNSUPPORTED,
                              f"the model has adapters {sorted(configs)}: name the one to publish "
                              "(adapter_name=)")
        active = next(iter(configs))
    return active


def _refuse_sharded(args, model) -> None:
    """Sharded parameters must be gathered before publishing; that is not done yet, so such a
    run is refused at its start rather than publishing one rank's shard."""
    from transformers.integrations import is_deepspeed_zero3_enabled
    if is_deepspeed_zero3_enabled():
        raise Unsupported(L.LF_E_UNSUPPORTED,
                          "DeepSpeed ZeRO-3 shards the adapter across ranks, and PublishCallback "
                          "does not gather it yet: use ZeRO-1/2 or DDP, or publish a gathered "
                          "state dict yourself with loraflip.publish")
    if getattr(args, "fsdp", None) or _has_sharded_parameters(model):
        raise Unsupported(L.LF_E_UNSUPPORTED,
                          "FSDP shards the adapter across ranks, and PublishCallback does not "
                          "gather it yet: use DDP, or publish a gathered state dict yourself with "
                          "loraflip.publish")


def _has_sharded_parameters(model) -> bool:
    if model is None:
        return False
    for p in model.parameters():
        # FSDP2 parameters are DTensors; ZeRO-3 partitioned ones carry a ds_id.
        if type(p).__name__ == "DTensor" or hasattr(p, "ds_id"):
            return True
        if type(getattr(p, "data", None)).__name__ == "DTensor":
            return True
    return False
