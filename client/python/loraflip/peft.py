"""A transformers/PEFT model whose LoRA adapter follows an adapter's active version.

    import loraflip.peft
    live = loraflip.peft.LiveModel(model, "policy")      # model: a PeftModel, or a transformers
                                                          # model with a PEFT adapter
    with live.step() as version:                          # pins the active version, binds it
        out = model.generate(**inputs)                    # every forward reads that version
    out, version = live.generate(**inputs)                # the same in one line

Each step pins the adapter's active version and points the model's `lora_A` / `lora_B` weights
of that adapter at the pinned tensors, without copying when dtype and device agree; the pin ends
with the step (on CUDA, once the work queued on the current stream is done). Outside a step the
bound weights are unbound, and calling the model raises: a version the step no longer pins may
be overwritten by the next publish, and reading it would mix two versions.

A compiled model (torch.compile) keeps fixed parameters: its weights are copied in place when
the active version changes, as PEFT's hotswap does, so the compiled graph stays valid.

Needs torch and peft (`pip install loraflip[torch]`); `import loraflip` alone does not.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from typing import Iterator, Optional

import torch
from peft.tuners.lora import LoraLayer
from peft.utils.other import get_pattern_key

from . import _lib as L
from ._errors import InvalidArgument, NotFound, NoVersion, Timeout, Unsupported

__all__ = ["LiveModel", "AdapterMismatch", "AdapterTensors"]

_log = logging.getLogger("loraflip")

# PeftModel wraps the base model as base_model.model; torch.compile as _orig_mod. Published
# names (get_peft_model_state_dict of a PeftModel) carry the first; a transformers model with an
# adapter added in place carries neither.
_WRAPPER_PREFIXES = ("_orig_mod.", "base_model.model.")


def _plain_name(name: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in _WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name, stripped = name[len(prefix):], True
    return name


class AdapterMismatch(InvalidArgument):
    """The published adapter does not fit the model: names the first tensor that differs."""


class _Binding:
    """One LoRA weight of the model and the published tensor it takes its values from."""

    __slots__ = ("key", "param", "own", "unbound")

    def __init__(self, key: str, param: torch.nn.Parameter):
        self.key = key  # <module>.lora_A.weight, without wrapper prefixes
        self.param = param
        self.own = param.data  # restored by close(); the storage copy mode writes into
        # Between steps a bound weight points at this: no memory, all zeros, and the layer's
        # forward hook refuses to run, so nothing reads a slot that may be rewritten.
        self.unbound = torch.zeros((), dtype=param.dtype, device=param.device).expand(param.shape)


class LiveModel:
    """Binds the LoRA weights of `model`'s adapter `adapter_name` (default: its only or active
    adapter) to the active version of loraflip adapter `name` for the length of each step.

    mode: "bind" (point the weights at the pinned tensors; a tensor whose dtype or device
    differs from the model's is copied, with one warning), "copy" (copy into the model's own
    weights when the version changes: what a compiled model needs), or "auto" (copy for a
    model compiled with torch.compile, else bind). `client`: a loraflip.Client (default: the
    process's default client). `timeout`: how long step() waits for a first version (None:
    as long as it takes)."""

    def __init__(self, model: torch.nn.Module, name: str, *, client=None,
                 adapter_name: Optional[str] = None, mode: str = "auto",
                 timeout: Optional[float] = None):
        if mode not in ("auto", "bind", "copy"):
            raise InvalidArgument(L.LF_E_INVALID_ARGUMENT,
                                  f"mode must be 'auto', 'bind' or 'copy', not {mode!r}")
        if client is None:
            import loraflip
            client = loraflip.default_client()
        self.model = model
        self.name = name
        self.client = client
        self.timeout = timeout
        self.compiled = hasattr(model, "_orig_mod")
        self.mode = ("copy" if self.compiled else "bind") if mode == "auto" else mode
        self.adapter_name = _adapter_name(model, adapter_name)
        self.version = 0  # the version the last step used (0: none yet)
        self._layers = _lora_layers(model, self.adapter_name)
        self._bindings = {b.key: b for layer_name, layer in self._layers
                          for b in _layer_bindings(layer_name, layer, self.adapter_name)}
        self._copied_version = 0  # copy mode: the version the model's own weights hold
        self._config_checked = False
        self._warned_copy = False
        self._matched_names: list[str] = []
        self._matched: list[tuple[_Binding, str]] = []
        # What _sources checked last (schema, device, pairing, model dtype and device), and
        # per pair whether the published tensor can be bound in place.
        self._checked_for: Optional[tuple] = None
        self._in_place: list[bool] = []
        self._in_step = False
        self._hooks = []
        if self.mode == "bind":
            for _, layer in self._layers:
                self._hooks.append(layer.register_forward_pre_hook(self._refuse_outside_step))
            self._unbind()

    # ---- steps ----
    @contextlib.contextmanager
    def step(self) -> Iterator[int]:
        """Pins the active version for the block and yields its number; the model's adapter
        weights are that version's inside the block. On CUDA the pin ends once the work queued
        on the current stream by the block is done (release_after), without waiting."""
        if self._in_step:
            raise InvalidArgument(L.LF_E_INVALID_ARGUMENT, "steps of one LiveModel do not nest")
        self._wait_for_first_version()
        acquired = self.client.acquire(self.name)
        version = acquired.__enter__()
        self._in_step = True
        try:
            if not self._config_checked:
                self._check_config()
            matched = self._match(version)
            if self.mode == "copy":
                if version.version != self._copied_version:
                    self._copy_in(version, matched)
                    self._copied_version = version.version
            else:
                self._bind(version, matched)
            self.version = version.version
            yield version.version
        finally:
            self._in_step = False
            if self.mode == "bind":
                self._unbind()
            stream = _current_cuda_stream(self._bindings)
            if stream is not None:
                version.release_after(stream)
            else:
                acquired.__exit__(None, None, None)

    def generate(self, *args, **kwargs):
        """model.generate(*args, **kwargs) inside one step: returns (output, version)."""
        with self.step() as version:
            return self.model.generate(*args, **kwargs), version

    def close(self) -> None:
        """Gives the model its own weights back (as they were when wrapped, or the last version
        copied in) and removes the forward hooks."""
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        for b in self._bindings.values():
            b.param.data = b.own

    def __enter__(self) -> "LiveModel":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- the adapter against the model ----
    def _wait_for_first_version(self) -> None:
        """Waits (without a daemon round trip, once the adapter exists) for its first version:
        a generation loop may start before its trainer has published anything."""
        if self.version:
            return
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        logged = False
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                if self.client.active_version(self.name):
                    return
                self.client.wait(self.name, 0, timeout=1.0 if left is None else min(left, 1.0))
                return
            except NotFound:
                time.sleep(0.05)  # not created yet
            except Timeout:
                pass
            if not logged:
                _log.info("waiting for a first version of '%s'", self.name)
                logged = True
            if deadline is not None and time.monotonic() >= deadline:
                raise NoVersion(L.LF_E_NO_VERSION,
                                f"adapter '{self.name}' has no version after {self.timeout} s")

    def _check_config(self) -> None:
        """Sets each layer's scaling from the published config (alpha / r, or alpha / sqrt(r)
        with rsLoRA; alpha_pattern as PEFT reads it) and refuses what the binding cannot
        serve."""
        config = self.client.info(self.name)
        import json
        try:
            peft_config = json.loads(config.get("metadata") or "{}").get("peft_config") or {}
        except ValueError:
            peft_config = {}
        lora = config.get("lora", {})
        alpha = float(peft_config.get("lora_alpha", lora.get("alpha", 8)))
        rslora = bool(peft_config.get("use_rslora", lora.get("use_rslora", False)))
        alpha_pattern = peft_config.get("alpha_pattern") or {}
        for flag in ("use_dora", "lora_bias"):
            if peft_config.get(flag):
                raise Unsupported(L.LF_E_UNSUPPORTED,
                                  f"adapter '{self.name}' was published with {flag}=True, which "
                                  "a live model does not serve (plain LoRA only)")
        for layer_name, layer in self._layers:
            r = layer.lora_A[self.adapter_name].weight.shape[0]
            key = get_pattern_key(alpha_pattern.keys(), layer_name) if alpha_pattern else None
            layer_alpha = float(alpha_pattern.get(key, alpha)) if alpha_pattern else alpha
            scaling = layer_alpha / math.sqrt(r) if rslora else layer_alpha / r
            current = layer.scaling[self.adapter_name]
            if isinstance(current, torch.Tensor):  # prepared for compiled hotswap
                current.fill_(scaling)
            else:
                layer.scaling[self.adapter_name] = scaling
        self._config_checked = True

    def _match(self, version) -> list[tuple[_Binding, str]]:
        """Pairs each LoRA weight of the model with the published tensor of the same module,
        comparing names without PeftModel's and torch.compile's prefixes (a trainer may publish
        from a PeftModel and generate with a transformers model holding the adapter, or the
        other way round). Refuses the first tensor that has no partner."""
        names = list(version)
        if names == self._matched_names:
            return self._matched
        published = {_plain_name(t): t for t in names}
        missing = sorted(k for k in self._bindings if k not in published)
        unknown = sorted(published[k] for k in published if k not in self._bindings)
        if missing:
            raise AdapterMismatch(
                L.LF_E_INVALID_ARGUMENT,
                f"adapter '{self.name}' has no tensor for '{missing[0]}', which the model's "
                f"adapter '{self.adapter_name}' needs ({len(missing)} missing: are its target "
                "modules the model's?)")
        if unknown:
            raise AdapterMismatch(
                L.LF_E_INVALID_ARGUMENT,
                f"adapter '{self.name}' has tensor '{unknown[0]}', which is no LoRA weight of "
                f"the model's adapter '{self.adapter_name}' ({len(unknown)} unknown: are its "
                "target modules the model's?)")
        self._matched_names = names
        self._matched = [(b, published[k]) for k, b in self._bindings.items()]
        return self._matched

    def _sources(self, version, matched) -> list[tuple[_Binding, torch.Tensor]]:
        """The pinned tensors as torch tensors, each paired with the weight it feeds: from the
        model's GPU's copy of a device-placed adapter when it has one, else from the first.
        Checks the shapes, and notes which tensors can be bound in place, once per adapter
        schema, device and model dtype: they change only when one of those does."""
        first = matched[0][0].param
        device = first.device.index if first.device.type == "cuda" and version.device >= 0 else None
        try:
            tensors = version.torch_tensors(device)
        except NotFound:  # no copy on the model's GPU
            device = None
            tensors = version.torch_tensors()
        pairs = [(b, tensors[published]) for b, published in matched]
        # The schema and the pairing by identity (an adapter created again gets a new schema,
        # even with the same names), the rest by value.
        key = (version._pin.schema, matched, (device, first.dtype, first.device))
        checked = self._checked_for
        if (checked is None or checked[0] is not key[0] or checked[1] is not key[1]
                or checked[2] != key[2]):
            for (b, src), (_, published) in zip(pairs, matched):
                if tuple(src.shape) != tuple(b.param.shape):
                    raise AdapterMismatch(
                        L.LF_E_INVALID_ARGUMENT,
                        f"tensor '{published}' of adapter '{self.name}' has shape "
                        f"{tuple(src.shape)} but the model's weight has {tuple(b.param.shape)}")
            self._in_place = [src.dtype == b.param.dtype and src.device == b.param.device
                              for b, src in pairs]
            self._checked_for = key
        return pairs

    def _bind(self, version, matched) -> None:
        sources = self._sources(version, matched)  # every check first: a refusal binds nothing
        for (b, src), in_place in zip(sources, self._in_place):
            if in_place:
                b.param.data = src
                continue
            if not self._warned_copy:
                self._warned_copy = True
                _log.warning("adapter '%s': tensor '%s' is %s on %s but the model's weight is "
                             "%s on %s: copying it every step (publish the model's dtype, "
                             "placed on its device, to read it in place)", self.name,
                             _published_name(matched, b), src.dtype, src.device, b.param.dtype,
                             b.param.device)
            with torch.no_grad():
                b.own.copy_(src)
            b.param.data = b.own

    def _copy_in(self, version, matched) -> None:
        with torch.no_grad():
            for b, src in self._sources(version, matched):
                b.param.data.copy_(src)

    def _unbind(self) -> None:
        for b in self._bindings.values():
            b.param.data = b.unbound

    def _refuse_outside_step(self, module, args):
        if not self._in_step:
            raise RuntimeError(
                f"the model's LoRA adapter '{self.adapter_name}' follows loraflip adapter "
                f"'{self.name}' and is bound only inside LiveModel.step() (or use "
                "LiveModel.generate, or close() the LiveModel to use the model's own weights)")


class AdapterTensors:
    """What get_peft_model_state_dict(model, adapter_name=...) returns, for a model whose
    adapter weights are updated in place (as optimizers do), without walking the model's whole
    state dict each time (10-20 ms on a 7B-shaped model, more than publishing it): the
    first call pairs each PEFT name with its parameter, later calls read the parameters.

    Falls back to get_peft_model_state_dict each time when a tensor of the state dict is not a
    parameter's (an adapter type that computes its saved tensors), and pairs again when the
    model's parameters change."""

    def __init__(self, model: torch.nn.Module, adapter_name: Optional[str] = None):
        self.model = model
        self.adapter_name = adapter_name or "default"
        self._pairs: Optional[list[tuple[str, torch.nn.Parameter]]] = None

    def __call__(self) -> dict[str, torch.Tensor]:
        if self._pairs is None or not self._still_the_models():
            self._pair()
        if not self._pairs:
            return self._state_dict()
        return {name: p.detach() for name, p in self._pairs}

    def _state_dict(self) -> dict[str, torch.Tensor]:
        from peft import get_peft_model_state_dict
        return get_peft_model_state_dict(self.model, adapter_name=self.adapter_name)

    def _pair(self) -> None:
        state = self._state_dict()
        by_storage = {(p.data_ptr(), tuple(p.shape), p.dtype): p for p in self.model.parameters()}
        pairs = []
        for name, t in state.items():
            p = by_storage.get((t.data_ptr(), tuple(t.shape), t.dtype))
            if p is None:
                pairs = []  # not plain parameters: ask PEFT every time
                break
            pairs.append((name, p))
        self._pairs = pairs

    def _still_the_models(self) -> bool:
        # An adapter loaded again (or a wrapper that re-creates parameters) makes new ones for
        # every layer: looking up the first paired name is enough to notice, and costs
        # microseconds where checking them all would cost milliseconds.
        if not self._pairs:
            return True
        name, param = self._pairs[0]
        try:
            return _parameter_at(self.model, name, self.adapter_name) is param
        except (AttributeError, KeyError):
            return False


def _parameter_at(model, published: str, adapter: str):
    """The parameter a PEFT saved name stands for (<module>.lora_A.weight is the module's
    lora_A[adapter].weight)."""
    path, _, leaf = published.rpartition(".")
    module_path, _, part = path.rpartition(".")
    module = model.get_submodule(module_path)
    holder = getattr(module, part)
    return getattr(holder[adapter] if isinstance(holder, torch.nn.ModuleDict) else holder, leaf)


def _published_name(matched, binding) -> str:
    return next(published for b, published in matched if b is binding)


def _adapter_name(model, given: Optional[str]) -> str:
    configs = getattr(model, "peft_config", None)
    if not configs:
        raise InvalidArgument(L.LF_E_INVALID_ARGUMENT,
                              "the model has no PEFT adapter (wrap it with peft.get_peft_model, or "
                              "add one with model.add_adapter, before binding it)")
    if given is not None:
        if given not in configs:
            raise InvalidArgument(L.LF_E_INVALID_ARGUMENT,
                                  f"the model has no adapter '{given}' (it has {sorted(configs)})")
        return given
    if len(configs) == 1:
        return next(iter(configs))
    active = getattr(model, "active_adapter", None)
    if isinstance(active, str) and active in configs:
        return active
    raise InvalidArgument(L.LF_E_INVALID_ARGUMENT,
                          f"the model has adapters {sorted(configs)}: name one (adapter_name=)")


def _lora_layers(model, adapter: str) -> list[tuple[str, LoraLayer]]:
    root = getattr(model, "_orig_mod", model)
    layers = []
    for qualified, module in root.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        name = _plain_name(qualified)
        if adapter in getattr(module, "lora_embedding_A", {}):
            raise Unsupported(L.LF_E_UNSUPPORTED,
                              f"layer '{name}' is a LoRA embedding, which a live model does not "
                              "serve yet (target linear layers)")
        if adapter not in module.lora_A:
            continue
        if adapter in getattr(module, "lora_variant", {}):
            raise Unsupported(L.LF_E_UNSUPPORTED,
                              f"layer '{name}' uses a LoRA variant (DoRA or another), which a live "
                              "model does not serve (plain LoRA only)")
        if getattr(module, "lora_bias", {}).get(adapter):
            raise Unsupported(L.LF_E_UNSUPPORTED,
                              f"layer '{name}' has a LoRA bias, which a live model does not serve")
        if adapter in getattr(module, "merged_adapters", []):
            raise InvalidArgument(L.LF_E_INVALID_ARGUMENT,
                                  f"adapter '{adapter}' is merged into layer '{name}': unmerge it "
                                  "first")
        layers.append((name, module))
    if not layers:
        raise InvalidArgument(L.LF_E_INVALID_ARGUMENT,
                              f"the model has no LoRA layer of adapter '{adapter}'")
    return layers


def _layer_bindings(name: str, layer: LoraLayer, adapter: str) -> list[_Binding]:
    # PEFT names a layer's weights <module>.lora_A.weight in the state dicts it saves (the
    # adapter's name removed), which is what trainers publish.
    return [_Binding(f"{name}.lora_A.weight", layer.lora_A[adapter].weight),
            _Binding(f"{name}.lora_B.weight", layer.lora_B[adapter].weight)]


def _current_cuda_stream(bindings: dict):
    """The stream a step's kernels went to, for a model on a GPU (its first weight's device)."""
    first = next(iter(bindings.values()))
    if first.param.device.type != "cuda":
        return None
    return torch.cuda.current_stream(first.param.device)
