"""vLLM serves loraflip adapters: `loraflip://` LoRA paths, loaded from pinned versions.

    # pip install "loraflip[vllm]" installs a vLLM general plugin (entry point
    # loraflip = loraflip.vllm:register) that every vLLM process loads, workers included.
    from vllm import LLM
    import loraflip.vllm
    llm = LLM(model, enable_lora=True, max_lora_rank=16)
    follow = loraflip.vllm.Follower(llm, "policy")          # the engine follows every flip
    outputs = llm.generate(prompts, lora_request=follow.request())

A LoRARequest whose path is `loraflip://<runtime-dir>/<adapter>@<version>` (the runtime dir
may be left out: `loraflip://policy@17` reads the default instance) is served from the
daemon: the worker pins that exact version and builds vLLM's LoRA model from the pinned tensors
with `LoRAModel.from_lora_tensors`, on the worker's GPU when the adapter is placed there. No
file is written or read.

What is copied, and how long a pin lasts:
  - lora_A and unscaled lora_B stay where the daemon put them (zero copy) while vLLM holds
    the LoRA model in its CPU-side cache; the version stays pinned until vLLM drops the model
    (remove_lora, or its LRU cache evicting it). The Follower removes versions older than its
    window, so a follower holds at most `keep` pins.
  - vLLM folds the scaling (alpha/r) into lora_B in place when it registers the model. For a
    loraflip model that step writes into one pooled buffer instead (the published bytes are
    read-only and never change); buffers return to the pool when vLLM frees the model.
  - vLLM itself copies into its stacked LoRA buffers when it activates the model (and, on a
    GPU worker of a host-placed adapter, into pinned host memory first), as for any adapter.

Every version is its own request (`policy@17`, with its own lora_int_id): vLLM's prefix cache
is keyed on the LoRA name, so a name must never stand for two versions. A path without a
version is refused for the same reason; request() resolves "the active version now".

Needs vllm (`pip install loraflip[vllm]`); `import loraflip` alone does not.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import os
import threading
from typing import Optional

import torch

from . import _lib as L
from ._errors import InvalidArgument, NotFound, NoVersion
from ._peft_config import peft_config

__all__ = ["register", "request", "parse_path", "lora_path", "load_version", "load_lora_model",
           "peft_helper", "Follower", "AdapterPath", "AdapterMismatch", "LoraflipResolver"]

_log = logging.getLogger("loraflip")

SCHEME = "loraflip://"


class AdapterMismatch(InvalidArgument):
    """A published adapter that vLLM's model cannot serve: names the first tensor that does not
    fit (an unknown target module, a rank or a shape)."""


# ---- paths and requests ----
@dataclasses.dataclass(frozen=True)
class AdapterPath:
    """A parsed loraflip:// path: runtime_dir None means the default instance."""
    runtime_dir: Optional[str]
    adapter: str
    version: Optional[int]

    def __str__(self) -> str:
        return lora_path(self.adapter, self.version, self.runtime_dir)


def is_loraflip_path(path: str) -> bool:
    return isinstance(path, str) and path.startswith(SCHEME)


def lora_path(adapter: str, version: Optional[int] = None,
              runtime_dir: Optional[str | os.PathLike] = None) -> str:
    """`loraflip://<runtime-dir>/<adapter>@<version>` (the dir absolute, or left out)."""
    where = "" if runtime_dir is None else os.path.abspath(os.fspath(runtime_dir)).rstrip("/") + "/"
    return f"{SCHEME}{where}{adapter}" + ("" if version is None else f"@{int(version)}")


def parse_path(path: str) -> AdapterPath:
    """Splits a loraflip:// path; adapter names cannot hold '/' or '@', so the last '/' ends the
    runtime dir and the last '@' starts the version."""
    if not is_loraflip_path(path):
        raise InvalidArgument(L.LF_E_INVALID_ARGUMENT, f"not a {SCHEME} path: {path!r}")
    rest = path[len(SCHEME):]
    runtime_dir, _, target = rest.rpartition("/")
    adapter, at, version_text = target.partition("@")
    if not adapter:
        raise InvalidArgument(L.LF_E_INVALID_ARGUMENT, f"{path!r} names no adapter")
    if runtime_dir and not runtime_dir.startswith("/"):
        raise InvalidArgument(L.LF_E_INVALID_ARGUMENT,
                              f"{path!r}: the runtime dir must be absolute "
                              f"({SCHEME}/run/loraflip/<instance>/<adapter>@<version>)")
    version = None
    if at:
        if not version_text.isdigit() or int(version_text) < 1:
            raise InvalidArgument(L.LF_E_INVALID_ARGUMENT,
                                  f"{path!r}: the version after '@' must be a number >= 1")
        version = int(version_text)
    return AdapterPath(runtime_dir or None, adapter, version)


class _LoraIds:
    """lora_int_id for each (runtime dir, adapter, version) this process asked for: vLLM needs
    a positive id unique per adapter within one engine, the same for every request of it."""

    def __init__(self):
        self._ids: dict[tuple, int] = {}
        self._lock = threading.Lock()

    def __call__(self, key: tuple) -> int:
        with self._lock:
            return self._ids.setdefault(key, len(self._ids) + 1)


_lora_ids = _LoraIds()


def request(adapter: str, version: Optional[int] = None, *,
            runtime_dir: Optional[str | os.PathLike] = None, client=None):
    """A vllm LoRARequest for `version` of `adapter` (None: the active version now), named
    `<adapter>@<version>` with a loraflip:// path. Raises loraflip.NoVersion when the adapter
    has no version yet."""
    from vllm.lora.request import LoRARequest
    if version is None:
        version = _client(runtime_dir, client).active_version(adapter)
        if not version:
            raise NoVersion(L.LF_E_NO_VERSION, f"adapter '{adapter}' has no version yet")
    version = int(version)
    where = None if runtime_dir is None else os.path.abspath(os.fspath(runtime_dir))
    return LoRARequest(lora_name=f"{adapter}@{version}",
                       lora_int_id=_lora_ids((where, adapter, version)),
                       lora_path=lora_path(adapter, version, where))


_clients: dict[tuple, object] = {}
_clients_lock = threading.Lock()


def _client(runtime_dir, given=None):
    """One loraflip.Client per runtime dir per process (vLLM forks and spawns workers: a child
    opens its own)."""
    if given is not None:
        return given
    import loraflip
    if runtime_dir is None:
        return loraflip.default_client()
    key = (os.fspath(runtime_dir), os.getpid())
    with _clients_lock:
        c = _clients.get(key)
        if c is None or c.closed:
            c = _clients[key] = loraflip.Client(runtime_dir)
        return c


# ---- the LoRA model ----
def peft_helper(info: dict, max_position_embeddings: Optional[int] = None):
    """vLLM's PEFTHelper from an adapter's info(): the PEFT config it was published with."""
    from vllm.lora.peft_helper import PEFTHelper
    config = dict(peft_config(info))
    if config.get("r") is None or config.get("lora_alpha") is None:
        raise InvalidArgument(L.LF_E_INVALID_ARGUMENT,
                              f"adapter '{info.get('name')}' has no LoRA config (r, lora_alpha): "
                              "publish it with config=")
    config["target_modules"] = config.get("target_modules") or []
    config["vllm_max_position_embeddings"] = max_position_embeddings
    return PEFTHelper.from_dict(config)


def _layer_weights_class():
    """LoRALayerWeights whose optimize() (vLLM folding the scaling into lora_B) writes the scaled
    lora_B into pooled memory instead of into the published tensor."""
    from vllm.lora.lora_weights import LoRALayerWeights

    class PublishedLoRALayerWeights(LoRALayerWeights):
        def __init__(self, weights: LoRALayerWeights, copies: "_ScaledCopies"):
            super().__init__(weights.module_name, weights.rank, weights.lora_alpha,
                             weights.lora_a, weights.lora_b, weights.scaling)
            self._copies = copies

        def optimize(self):
            if self.scaling == 1:
                return self
            self.lora_b = self._copies.scaled(self.lora_b, self.scaling)
            self.scaling = 1
            return self

    return PublishedLoRALayerWeights


_published_weights_class = None


class _BufferPool:
    """Flat buffers reused across versions: a fresh allocation per version (or per tensor) is
    fresh memory that the kernel zeroes page by page, which costs more than the scaling itself.
    A buffer is free again once nothing but the pool refers to its storage."""

    def __init__(self, keep: int = 8):
        self._buffers: list[tuple[torch.Tensor, int]] = []  # (buffer, its idle use count)
        self._lock = threading.Lock()
        self._keep = keep

    @staticmethod
    def _use_count(t: torch.Tensor) -> int:
        return torch._C._storage_Use_Count(t.untyped_storage()._cdata)

    def take(self, numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """A view of a free buffer: the view itself holds the storage, so the buffer is busy
        from the moment it is handed out until every tensor carved from it is gone."""
        with self._lock:
            for buf, idle in self._buffers:
                if (buf.numel() == numel and buf.dtype == dtype and buf.device == device
                        and self._use_count(buf) == idle):
                    return buf[:]
            buf = torch.empty(numel, dtype=dtype, device=device)
            idle = self._use_count(buf)
            taken = buf[:]
            self._buffers.append((buf, idle))
            if len(self._buffers) > self._keep:  # forget the oldest idle one
                for i, (b, n) in enumerate(self._buffers):
                    if self._use_count(b) == n:
                        del self._buffers[i]
                        break
            return taken


_pool = _BufferPool() if hasattr(torch._C, "_storage_Use_Count") else None


class _ScaledCopies:
    """The scaled lora_B tensors of one LoRA model, carved from one buffer (per dtype and
    device) taken on the first optimize()."""

    def __init__(self, sizes: dict[tuple, int]):
        self._sizes = sizes  # (dtype, device) -> elements of every lora_B to scale
        self._buffers: dict[tuple, tuple[torch.Tensor, int]] = {}

    def scaled(self, b: torch.Tensor, scaling: float) -> torch.Tensor:
        key = (b.dtype, b.device)
        buf, at = self._buffers.get(key, (None, 0))
        if buf is None:
            n = self._sizes[key]
            buf = (_pool.take(n, b.dtype, b.device) if _pool is not None
                   else torch.empty(n, dtype=b.dtype, device=b.device))
        out = buf[at:at + b.numel()].view(b.shape)
        torch.mul(b, scaling, out=out)  # the same rounding as vLLM's `lora_b *= scaling`
        self._buffers[key] = (buf, at + b.numel())
        return out


def _module_names(tensors, weights_mapper, skip_prefixes):
    """(tensor name, vLLM module name, PEFT module name, is lora_A) of every LoRA tensor, as
    LoRAModel.from_lora_tensors will read them."""
    from vllm.lora.lora_model import LoRAModel
    from vllm.lora.utils import is_base_embedding_weights, parse_fine_tuned_lora_name
    out = []
    for name in tensors:
        if is_base_embedding_weights(name):
            continue
        if skip_prefixes and LoRAModel._should_skip_module(name, skip_prefixes):
            continue
        module, is_a = parse_fine_tuned_lora_name(name, weights_mapper)
        peft_module, _ = parse_fine_tuned_lora_name(name)
        out.append((name, module, peft_module, is_a))
    return out


def _check(adapter: str, tensors: dict, names, helper, expected_modules, module_shapes) -> None:
    """Refuses what vLLM would load wrongly or fail on late: a module vLLM's model does not
    target, lora_A without lora_B, ranks that disagree with the config, shapes that are not the
    model's. Names the first tensor at fault."""
    modules: dict[str, dict] = {}
    for name, module, peft_module, is_a in sorted(names):
        if name.split(".")[-2] not in ("lora_A", "lora_B"):
            raise AdapterMismatch(L.LF_E_INVALID_ARGUMENT,
                                  f"tensor '{name}' of adapter '{adapter}' is no lora_A/lora_B "
                                  "weight (embeddings and modules_to_save are not served)")
        base = module.rsplit(".", 1)[-1]
        suffix = module[module.find(".experts") + 1:] if ".experts" in module else base
        if expected_modules is not None and suffix not in expected_modules:
            raise AdapterMismatch(L.LF_E_INVALID_ARGUMENT,
                                  f"tensor '{name}' of adapter '{adapter}' targets module "
                                  f"'{base}', which vLLM's model does not serve with LoRA "
                                  f"(it serves {sorted(expected_modules)})")
        entry = modules.setdefault(module, {"peft": peft_module})
        entry["A" if is_a else "B"] = name
    for module, entry in modules.items():
        if "A" not in entry or "B" not in entry:
            have = entry.get("A") or entry.get("B")
            raise AdapterMismatch(L.LF_E_INVALID_ARGUMENT,
                                  f"tensor '{have}' of adapter '{adapter}' has no "
                                  f"{'lora_B' if 'A' in entry else 'lora_A'} partner")
        a, b = tensors[entry["A"]], tensors[entry["B"]]
        rank, _ = helper.get_rank_and_scaling(entry["peft"])
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != rank or b.shape[1] != rank:
            raise AdapterMismatch(L.LF_E_INVALID_ARGUMENT,
                                  f"tensors '{entry['A']}' {tuple(a.shape)} and '{entry['B']}' "
                                  f"{tuple(b.shape)} of adapter '{adapter}' are not rank {rank} "
                                  "(lora_A is [r, in], lora_B is [out, r])")
        want = (module_shapes or {}).get(module)
        have = (a.shape[1], b.shape[0])
        if want is not None and any(w is not None and w != h for w, h in zip(want, have)):
            raise AdapterMismatch(L.LF_E_INVALID_ARGUMENT,
                                  f"module '{module}' of adapter '{adapter}' maps "
                                  f"{a.shape[1]} -> {b.shape[0]} features, but vLLM's model "
                                  f"layer maps {want[0]} -> {want[1]}")


def load_lora_model(version, helper, *, lora_model_id: int, expected_modules=None,
                    device="cpu", dtype: Optional[torch.dtype] = None,
                    model_vocab_size: Optional[int] = None, weights_mapper=None,
                    skip_prefixes=None, module_shapes: Optional[dict] = None):
    """vLLM's LoRAModel for a pinned loraflip Version (what the worker plugin builds).

    The model's lora_A and lora_B are the pinned tensors (zero copy when `dtype` is theirs and
    they already sit on `device`); vLLM's later in-place scaling of lora_B goes to pooled
    memory. The version stays pinned while any of those tensors lives, so vLLM dropping the
    model ends the pin. `expected_modules`: the module names vLLM's model targets (as vLLM's
    loader computes them); `module_shapes`: module -> (in, out) features to check against."""
    from vllm.lora.lora_model import LoRAModel
    global _published_weights_class
    if _published_weights_class is None:
        _published_weights_class = _layer_weights_class()
    target = torch.device(device)
    ordinal = target.index if target.type == "cuda" and version.device >= 0 else None
    try:
        tensors = version.torch_tensors(ordinal)
    except NotFound:  # no copy on this GPU: read the first one, from_lora_tensors moves it
        tensors = version.torch_tensors()
    # Names, ranks and shapes are the schema's and the config's: checked once per adapter
    # (and per model asking), not per version.
    checked = version._pin.schema.memo.setdefault("vllm checked", set())
    key = (repr(helper), None if expected_modules is None else frozenset(expected_modules),
           None if module_shapes is None else frozenset(module_shapes.items()),
           id(weights_mapper), tuple(skip_prefixes or ()))
    if key not in checked:
        names = _module_names(tensors, weights_mapper, skip_prefixes)
        _check(version.name, tensors, names, helper, expected_modules, module_shapes)
        checked.add(key)
    model = LoRAModel.from_lora_tensors(
        lora_model_id=lora_model_id, tensors=tensors, peft_helper=helper, device=target,
        dtype=dtype, model_vocab_size=model_vocab_size, weights_mapper=weights_mapper,
        skip_prefixes=skip_prefixes)
    published = {id(t) for t in tensors.values()}
    sizes: dict[tuple, int] = {}
    shared = []
    for module, weights in model.loras.items():
        # A lora_B that from_lora_tensors converted (dtype, device) is vLLM's own copy, which
        # it may scale in place; one that is still the published tensor must not be.
        if id(weights.lora_b) in published and weights.scaling != 1:
            key = (weights.lora_b.dtype, weights.lora_b.device)
            sizes[key] = sizes.get(key, 0) + weights.lora_b.numel()
            shared.append(module)
    if shared:
        copies = _ScaledCopies(sizes)
        for module in shared:
            model.loras[module] = _published_weights_class(model.loras[module], copies)
    return model


def load_version(client, adapter: str, version: int, *, lora_model_id: int,
                 max_position_embeddings: Optional[int] = None, lora_config=None, gpu=None,
                 **kwargs):
    """Pins exactly `version` of `adapter` and returns vLLM's LoRAModel of it (load_lora_model;
    `kwargs` go there), with the PEFT helper of the adapter's published config, validated
    against vLLM's `lora_config` when given. What the worker plugin does per request.
    `gpu`: the worker's device; a version placed on GPUs is then read on it (zero copy when
    the worker's GPU holds a copy), where a host-placed one is loaded for vLLM's CPU cache as
    vLLM's own loader does."""
    with client.acquire(adapter, version=version) as pinned:
        if gpu is not None and torch.device(gpu).type == "cuda" and pinned.device >= 0:
            kwargs["device"] = torch.device(gpu)
        memo = pinned._pin.schema.memo
        helper = memo.get(("vllm helper", max_position_embeddings))
        if helper is None:  # the config is the adapter's: one daemon round trip per adapter
            helper = peft_helper(client.info(adapter), max_position_embeddings)
            memo[("vllm helper", max_position_embeddings)] = helper
        if lora_config is not None:
            helper.validate_legal(lora_config)
        return load_lora_model(pinned, helper, lora_model_id=lora_model_id, **kwargs)
    # leaving the block ends it; the tensors in the model keep the version pinned


def _module_shapes(adapters) -> dict:
    """module -> (in, out) features of each LoRA layer of vLLM's model, full size (as the
    adapter holds them; tensor parallelism slices later). The parts of a packed layer (q/k/v,
    gate/up) get the packed layer's output split, except where k/v heads are replicated."""
    shapes = {}
    for name, module in getattr(adapters, "modules", {}).items():
        base = getattr(module, "base_layer", None)
        n_in, n_out = getattr(base, "input_size", None), getattr(base, "output_size", None)
        if not isinstance(n_in, int):
            continue
        parts = getattr(adapters, "packed_modules", {}).get(name)
        if parts:
            outs = getattr(base, "output_sizes", None)
            exact = (isinstance(outs, (list, tuple)) and len(outs) == len(parts)
                     and getattr(base, "num_kv_head_replicas", 1) == 1)
            for i, part in enumerate(parts):
                shapes[part] = (n_in, int(outs[i]) if exact else None)
        elif isinstance(n_out, int):
            shapes[name] = (n_in, n_out)
    return shapes


# ---- the worker plugin ----
def _load_from_loraflip(manager, lora_request):
    """WorkerLoRAManager._load_adapter for a loraflip:// path: the same steps as vLLM's loader
    (expected modules, PEFT helper validated against the LoRA config, weights mapper, skipped
    prefixes, MoE and classification checks) with the tensors of a pinned version."""
    from vllm.exceptions import LoRAAdapterNotFoundError
    where = parse_path(lora_request.lora_path)
    if where.version is None:
        raise InvalidArgument(L.LF_E_INVALID_ARGUMENT,
                              f"LoRA path {lora_request.lora_path!r} names no version: vLLM keys "
                              "its caches on the request, so each version needs its own "
                              "(loraflip.vllm.request() gives the active one)")
    adapters = manager._adapter_manager
    expected: set[str] = set()
    for module in adapters.supported_lora_modules:
        expected.update(adapters.packed_modules_mapping.get(module, [module]))
        if module == "experts":
            expected.add(module)
    model = adapters.model
    mapper = getattr(model, "hf_to_vllm_mapper", None)
    if mapper is not None:
        mapper = mapper.get_rename_mapper()
    client = _client(where.runtime_dir)
    try:
        lora = load_version(
            client, where.adapter, where.version, lora_model_id=lora_request.lora_int_id,
            max_position_embeddings=manager.max_position_embeddings,
            lora_config=manager.lora_config, expected_modules=expected,
            gpu=manager.device, dtype=manager.lora_config.lora_dtype,
            model_vocab_size=manager.vocab_size, weights_mapper=mapper,
            skip_prefixes=getattr(model, "lora_skip_prefixes", None),
            module_shapes=_module_shapes(adapters))
    except (NotFound, NoVersion) as e:
        raise LoRAAdapterNotFoundError(lora_request.lora_name, lora_request.lora_path) from e
    lora.is_3d_lora_weight = lora_request.is_3d_lora_weight
    adapters._validate_moe_lora_format(lora)
    adapters._validate_classification_head_lora(lora)
    return lora


def register() -> None:
    """The vLLM general plugin (entry point group vllm.general_plugins): serves loraflip://
    LoRA paths in every worker, and resolves `<adapter>@<version>` model names for `vllm serve`.
    vLLM calls it once per process; calling it again does nothing."""
    from vllm.lora.worker_manager import WorkerLoRAManager
    load = WorkerLoRAManager._load_adapter
    if getattr(load, "_loraflip", False):
        return

    @functools.wraps(load)
    def _load_adapter(self, lora_request):
        if is_loraflip_path(lora_request.lora_path):
            return _load_from_loraflip(self, lora_request)
        return load(self, lora_request)

    _load_adapter._loraflip = True
    WorkerLoRAManager._load_adapter = _load_adapter
    _register_resolver()


# ---- following flips from the engine's side ----
class Follower:
    """Keeps an engine's LoRA set on the active version of `adapter`: request() adds a version
    newer than the last one it gave (loading it in every worker, tensor-parallel ranks
    included, before the next generate) and removes versions older than the `keep` newest, so
    that vLLM lets go of their pins. Requests already running keep their version: with
    vllm.LLM, generate() returns only when its requests are done, so between calls nothing
    runs; an async server must keep `keep` at least the number of versions it may have in
    flight.

    `engine`: a vllm.LLM, or an engine with add_lora/remove_lora (LLMEngine); for AsyncLLM use
    `await follower.arequest()`."""

    def __init__(self, engine, adapter: str, *, keep: int = 2,
                 runtime_dir: Optional[str | os.PathLike] = None, client=None):
        if keep < 1:
            raise InvalidArgument(L.LF_E_INVALID_ARGUMENT, f"keep must be >= 1, not {keep}")
        self.engine = getattr(engine, "llm_engine", engine)
        self.adapter = adapter
        self.keep = keep
        self.runtime_dir = runtime_dir
        self.client = _client(runtime_dir, client)
        self.loaded: list = []  # LoRARequests added, oldest first

    def _newest(self):
        active = self.client.active_version(self.adapter)
        if not active:
            raise NoVersion(L.LF_E_NO_VERSION, f"adapter '{self.adapter}' has no version yet")
        if self.loaded and parse_path(self.loaded[-1].lora_path).version >= active:
            return None  # a rollback also keeps the newest loaded one until a newer flip
        return request(self.adapter, active, runtime_dir=self.runtime_dir, client=self.client)

    def request(self):
        """The LoRARequest of the active version, loaded in the engine."""
        new = self._newest()
        if new is not None:
            self.engine.add_lora(new)
            self.loaded.append(new)
            while len(self.loaded) > self.keep:
                self.engine.remove_lora(self.loaded.pop(0).lora_int_id)
        return self.loaded[-1]

    async def arequest(self):
        """request() for an engine whose add_lora/remove_lora are coroutines (AsyncLLM)."""
        new = self._newest()
        if new is not None:
            await self.engine.add_lora(new)
            self.loaded.append(new)
            while len(self.loaded) > self.keep:
                await self.engine.remove_lora(self.loaded.pop(0).lora_int_id)
        return self.loaded[-1]

    def close(self) -> None:
        """Removes every version this follower loaded (their pins end)."""
        while self.loaded:
            self.engine.remove_lora(self.loaded.pop(0).lora_int_id)


# ---- `vllm serve`: model names <adapter>@<version> ----
class LoraflipResolver:
    """For the OpenAI-compatible server (with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True): a request
    for model `<adapter>@<version>` loads that version of the adapter from the default instance
    ($LORAFLIP_RUNTIME_DIR); other names are left to other resolvers. A bare adapter name is not
    resolved: the server caches what a name resolves to, and the name must mean one version."""

    async def resolve_lora(self, base_model_name: str, lora_name: str):
        adapter, at, version = lora_name.partition("@")
        if not at or not version.isdigit() or int(version) < 1:
            return None
        try:
            if not _client(None).info(adapter):
                return None
        except NotFound:
            return None
        return request(adapter, int(version))


def _register_resolver() -> None:
    try:
        from vllm.lora.resolver import LoRAResolver, LoRAResolverRegistry
    except ImportError:
        return
    resolver = type("LoraflipResolver", (LoraflipResolver, LoRAResolver), {})()
    if "loraflip" not in LoRAResolverRegistry.get_supported_resolvers():
        LoRAResolverRegistry.register_resolver("loraflip", resolver)
