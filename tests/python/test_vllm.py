"""loraflip.vllm: vLLM's LoRA models built from pinned versions, on the CPU, without an engine.

vLLM's own code runs wherever it can without a GPU: LoRAModel.from_lora_tensors, PEFTHelper,
the worker manager's _load_adapter (patched by the plugin as vLLM loads it) and the model
manager's _create_merged_loras_inplace, which packs q/k/v and gate/up and folds the scaling
into lora_B in place. Only the model manager's layer bookkeeping (which needs a model on a
device) is set by hand. The engine end to end is tests/gpu/vllm_engine_test.py."""
from __future__ import annotations

import gc
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="the vLLM plugin needs torch (scripts/setup installs it)")
pytest.importorskip("vllm", reason="the vLLM plugin needs vllm (scripts/setup installs it)")

import loraflip  # noqa: E402
import plugin_dist  # noqa: E402
import loraflip.vllm as lv  # noqa: E402
from vllm.lora import lora_model as vllm_lora_model  # noqa: E402
from vllm.lora import model_manager as vllm_model_manager  # noqa: E402
from vllm.lora.lora_model import LoRAModel  # noqa: E402
from vllm.lora.model_manager import LoRAModelManager  # noqa: E402
from vllm.lora.peft_helper import PEFTHelper  # noqa: E402
from vllm.lora.request import LoRARequest  # noqa: E402
from vllm.lora.worker_manager import LRUCacheWorkerLoRAManager  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
HIDDEN, KV, FFN, LAYERS, RANK = 64, 32, 96, 2, 8
ATTN = {"q_proj": (HIDDEN, HIDDEN), "k_proj": (HIDDEN, KV), "v_proj": (HIDDEN, KV),
        "o_proj": (HIDDEN, HIDDEN)}
MLP = {"gate_proj": (HIDDEN, FFN), "up_proj": (HIDDEN, FFN), "down_proj": (FFN, HIDDEN)}
PACKED = {"qkv_proj": ["q_proj", "k_proj", "v_proj"], "gate_up_proj": ["gate_proj", "up_proj"]}


@pytest.fixture(autouse=True)
def no_pinned_host_memory(monkeypatch):
    """vLLM's platform probe finds no platform on a machine without a GPU and still answers that
    pinned host memory is available (torch is a CUDA build); pinning then fails. A CPU worker
    does not pin: say so, as vLLM's CPU platform does."""
    monkeypatch.setattr(vllm_lora_model, "PIN_MEMORY", False)
    monkeypatch.setattr(vllm_model_manager, "PIN_MEMORY", False)


def module_path(layer: int, module: str) -> str:
    part = "self_attn" if module in ATTN else "mlp"
    return f"model.layers.{layer}.{part}.{module}"


def adapter_tensors(seed: int, dtype=torch.bfloat16, modules=None) -> dict:
    """A PEFT state dict of a Llama-shaped model (names as get_peft_model_state_dict gives)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for layer in range(LAYERS):
        for module, (n_in, n_out) in {**ATTN, **MLP}.items():
            if modules is not None and module not in modules:
                continue
            prefix = f"base_model.model.{module_path(layer, module)}"
            out[f"{prefix}.lora_A.weight"] = torch.randn(RANK, n_in, generator=g).to(dtype)
            out[f"{prefix}.lora_B.weight"] = torch.randn(n_out, RANK, generator=g).to(dtype)
    return out


def config(**extra) -> dict:
    return {"r": RANK, "lora_alpha": 16, "target_modules": sorted({**ATTN, **MLP}), **extra}


def bare_model_manager() -> LoRAModelManager:
    """vLLM's model manager without a model: the packed modules (what it learns from the model's
    layers) set by hand, everything else vLLM's own code."""
    m = LoRAModelManager.__new__(LoRAModelManager)
    m.packed_modules = {}
    for layer in range(LAYERS):
        for packed, parts in PACKED.items():
            m.packed_modules[module_path(layer, parts[0]).rsplit(".", 1)[0] + "." + packed] = [
                module_path(layer, p) for p in parts]
    m.modules = {}
    m.is_pooling_model = False
    m.supports_mm = False
    m._enable_moe_shared_loras = False
    m._is_non_gated_moe = False
    m.supported_lora_modules = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
    m.packed_modules_mapping = dict(PACKED)
    m.model = torch.nn.Module()
    m.moe_ep_load_spec = None
    m._classification_head = None
    m._enable_mixed_moe_lora_format = False
    return m


def worker_manager() -> LRUCacheWorkerLoRAManager:
    """vLLM's worker manager as a CPU worker holds it, around the bare model manager, with the
    plugin registered as vLLM's plugin loader does in each worker."""
    from vllm.config.lora import LoRAConfig
    lv.register()
    w = LRUCacheWorkerLoRAManager.__new__(LRUCacheWorkerLoRAManager)
    w._adapter_manager = bare_model_manager()
    w._lora_model_cls = LoRAModel
    w.lora_config = LoRAConfig(max_lora_rank=16, max_loras=2, lora_dtype=torch.bfloat16)
    w.max_position_embeddings = 2048
    w.vocab_size = 1000
    w.device = torch.device("cpu")
    return w


def scaled(t: torch.Tensor, s: float) -> torch.Tensor:
    out = t.clone()
    out *= s  # what vLLM's optimize() does
    return out


# ---- paths and requests ----
def test_paths_round_trip_and_bad_ones_are_refused():
    p = lv.parse_path("loraflip:///run/loraflip/default/policy@17")
    assert p == lv.AdapterPath("/run/loraflip/default", "policy", 17)
    assert str(p) == "loraflip:///run/loraflip/default/policy@17"
    assert lv.parse_path("loraflip://policy") == lv.AdapterPath(None, "policy", None)
    for bad in ("/tmp/policy", "loraflip://", "loraflip://run/x/policy@1",
                "loraflip:///run/x/policy@0", "loraflip:///run/x/policy@v2"):
        with pytest.raises(loraflip.InvalidArgument):
            lv.parse_path(bad)


def test_request_names_the_active_version_and_one_id_per_version(client, daemon, name):
    with pytest.raises(loraflip.NotFound):
        lv.request(name, client=client)
    v1 = client.publish(name, adapter_tensors(1), config())
    r = lv.request(name, runtime_dir=daemon.dir, client=client)
    assert (r.lora_name, r.lora_path) == (f"{name}@{v1}", f"loraflip://{daemon.dir}/{name}@{v1}")
    v2 = client.publish(name, adapter_tensors(2), config())
    r2 = lv.request(name, runtime_dir=daemon.dir, client=client)
    assert r2.lora_name == f"{name}@{v2}" and r2.lora_int_id != r.lora_int_id
    assert lv.request(name, v1, runtime_dir=daemon.dir).lora_int_id == r.lora_int_id


# ---- the LoRA model ----
def load(client, name, version, **kwargs):
    return lv.load_version(client, name, version, lora_model_id=version,
                           max_position_embeddings=2048, **kwargs)


def test_lora_model_reads_the_pinned_tensors_with_the_published_scaling(client, name):
    weights = adapter_tensors(3)
    v = client.publish(name, weights, config())
    model = load(client, name, v, dtype=torch.bfloat16)
    assert model.rank == RANK and len(model.loras) == LAYERS * 7
    with client.acquire(name, version=v) as pinned:
        in_place = {t: x.data_ptr() for t, x in pinned.torch_tensors().items()}
    for layer in range(LAYERS):
        for module in {**ATTN, **MLP}:
            lw = model.get_lora(module_path(layer, module))
            prefix = f"base_model.model.{module_path(layer, module)}"
            assert torch.equal(lw.lora_a, weights[f"{prefix}.lora_A.weight"])
            assert torch.equal(lw.lora_b, weights[f"{prefix}.lora_B.weight"])
            assert lw.lora_a.data_ptr() == in_place[f"{prefix}.lora_A.weight"], "lora_A copied"
            assert lw.lora_b.data_ptr() == in_place[f"{prefix}.lora_B.weight"], "lora_B copied"
            assert lw.scaling == 16 / RANK


@pytest.mark.parametrize("extra, expect", [
    ({"use_rslora": True}, {"q_proj": 16 / math.sqrt(RANK), "down_proj": 16 / math.sqrt(RANK)}),
    ({"alpha_pattern": {"down_proj": 4}}, {"q_proj": 16 / RANK, "down_proj": 4 / RANK}),
])
def test_scaling_follows_rslora_and_alpha_pattern(client, name, extra, expect):
    v = client.publish(name, adapter_tensors(4), config(**extra))
    model = load(client, name, v)
    for module, scaling in expect.items():
        assert model.get_lora(module_path(0, module)).scaling == pytest.approx(scaling)


def test_vllms_in_place_steps_leave_the_published_bytes_alone(client, name):
    """vLLM's own _create_merged_loras_inplace (pack q/k/v and gate/up, fold the scaling into
    lora_B in place) gives the same values as on vLLM's own copies of the tensors, bitwise, and
    the version's bytes stay as published."""
    weights = adapter_tensors(5)
    v = client.publish(name, weights, config())
    ours = load(client, name, v, dtype=torch.bfloat16)
    bare_model_manager()._create_merged_loras_inplace(ours)
    helper = PEFTHelper.from_dict({**config(), "vllm_max_position_embeddings": 2048})
    theirs = LoRAModel.from_lora_tensors(v, {k: t.clone() for k, t in weights.items()}, helper,
                                         device="cpu", dtype=torch.bfloat16)
    bare_model_manager()._create_merged_loras_inplace(theirs)
    assert sorted(ours.loras) == sorted(theirs.loras)
    for module, lw in theirs.loras.items():
        mine = ours.loras[module]
        a, b = (lw.lora_a, lw.lora_b) if lw.is_packed else ([lw.lora_a], [lw.lora_b])
        ma, mb = (mine.lora_a, mine.lora_b) if mine.is_packed else ([mine.lora_a], [mine.lora_b])
        assert all(torch.equal(x, y) for x, y in zip(a + b, ma + mb)), module
        assert mine.scaling == lw.scaling
    qkv = ours.loras["model.layers.0.self_attn.qkv_proj"]
    assert torch.equal(qkv.lora_b[0], scaled(weights[
        "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"], 16 / RANK))
    with client.acquire(name, version=v) as pinned:
        for t, x in pinned.torch_tensors().items():
            assert torch.equal(x, weights[t]), f"{t} changed in the arena"


def test_the_version_stays_pinned_while_vllm_holds_the_model(client, name):
    """Slots: 2, so a third version needs the first one's slot: held while the LoRA model
    lives (vLLM's cache), free once vLLM drops it, and the scaled buffer goes back to the pool."""
    client.publish(name, adapter_tensors(6), config(), slots=2, history=0)
    model = load(client, name, 1)
    bare_model_manager()._create_merged_loras_inplace(model)
    client.publish(name, adapter_tensors(7), config())
    with pytest.raises(loraflip.NoFreeSlot):
        client.publish(name, adapter_tensors(8), config(), retry_s=0.2)
    buffer = model.loras["model.layers.0.mlp.down_proj"].lora_b.data_ptr()
    del model
    gc.collect()
    assert client.publish(name, adapter_tensors(8), config(), retry_s=5) == 3
    again = load(client, name, 3)
    bare_model_manager()._create_merged_loras_inplace(again)
    assert again.loras["model.layers.0.mlp.down_proj"].lora_b.data_ptr() == buffer, \
        "the scaled lora_B did not reuse the pooled buffer"


def test_the_buffer_pool_lends_a_buffer_to_one_model_at_a_time():
    pool = lv._BufferPool(keep=2)
    cpu = torch.device("cpu")
    a, b = pool.take(1000, torch.bfloat16, cpu), pool.take(1000, torch.bfloat16, cpu)
    assert a.data_ptr() != b.data_ptr(), "one buffer lent twice"
    part = a[10:20]
    first = a.data_ptr()
    del a
    assert pool.take(1000, torch.bfloat16, cpu).data_ptr() != first, "lent while a slice lives"
    del part
    assert pool.take(1000, torch.bfloat16, cpu).data_ptr() == first, "not reused once free"
    assert pool.take(1000, torch.float32, cpu).dtype == torch.float32


def test_another_dtype_is_converted_by_vllm_and_scaled_in_its_own_copy(client, name):
    weights = adapter_tensors(9, dtype=torch.float32)
    v = client.publish(name, weights, config())
    model = load(client, name, v, dtype=torch.bfloat16)
    bare_model_manager()._create_merged_loras_inplace(model)
    down = model.get_lora(module_path(1, "down_proj"))
    assert down.lora_b.dtype == torch.bfloat16
    assert torch.equal(down.lora_b, scaled(
        weights[f"base_model.model.{module_path(1, 'down_proj')}.lora_B.weight"].to(torch.bfloat16),
        16 / RANK))


def test_unknown_target_modules_and_wrong_shapes_are_refused(client, name):
    v = client.publish(name, adapter_tensors(10), config())
    with pytest.raises(lv.AdapterMismatch, match=r"lora_A.weight' .*targets module 'down_proj'"):
        load(client, name, v, expected_modules={"q_proj", "k_proj", "v_proj", "o_proj",
                                                "gate_proj", "up_proj"})
    with pytest.raises(lv.AdapterMismatch, match=r"module 'model.layers.0.self_attn.k_proj' .* "
                                                 r"maps 64 -> 32 .* maps 64 -> 16"):
        load(client, name, v, module_shapes={module_path(0, "k_proj"): (HIDDEN, 16)})
    other = name + "-r"  # a config whose rank_pattern the tensors do not follow
    v = client.publish(other, adapter_tensors(11), config(rank_pattern={"down_proj": 4}))
    with pytest.raises(lv.AdapterMismatch, match=r"down_proj.lora_A.weight' \(8, 96\) .* not rank 4"):
        load(client, other, v)


# ---- the plugin in vLLM's worker manager ----
def test_the_worker_manager_serves_loraflip_paths(client, daemon, name):
    lv.register()
    lv.register()  # vLLM may load plugins more than once: nothing doubles
    weights = adapter_tensors(12)
    v = client.publish(name, weights, config())
    manager = worker_manager()
    model = manager._load_adapter(lv.request(name, v, runtime_dir=daemon.dir))
    assert model.id == lv.request(name, v, runtime_dir=daemon.dir).lora_int_id
    manager._adapter_manager._create_merged_loras_inplace(model)
    qkv = model.loras["model.layers.1.self_attn.qkv_proj"]
    assert torch.equal(qkv.lora_a[2], weights[
        "base_model.model.model.layers.1.self_attn.v_proj.lora_A.weight"])
    with pytest.raises(loraflip.InvalidArgument, match="names no version"):
        manager._load_adapter(LoRARequest(name, 99, lv.lora_path(name, None, daemon.dir)))
    from vllm.exceptions import LoRAAdapterNotFoundError
    with pytest.raises(LoRAAdapterNotFoundError):
        manager._load_adapter(LoRARequest("nope@1", 98, lv.lora_path("nope", 1, daemon.dir)))
    with pytest.raises(ValueError, match="greater than max_lora_rank"):
        big = name + "-big"
        client.publish(big, adapter_tensors(13), config(r=RANK, rank_pattern={"q_proj": 32}))
        manager._load_adapter(lv.request(big, 1, runtime_dir=daemon.dir))


def test_a_path_that_is_not_loraflips_still_loads_from_disk(tmp_path):
    import json
    from safetensors.torch import save_file
    lv.register()
    weights = adapter_tensors(14)
    save_file(weights, str(tmp_path / "adapter_model.safetensors"))
    (tmp_path / "adapter_config.json").write_text(json.dumps(config()))
    model = worker_manager()._load_adapter(LoRARequest("disk", 5, str(tmp_path)))
    down = model.get_lora(module_path(0, "down_proj"))
    assert torch.equal(down.lora_b, weights[f"base_model.model.{module_path(0, 'down_proj')}"
                                            ".lora_B.weight"])


def test_vllms_plugin_loader_finds_and_runs_the_entry_point(tmp_path):
    """The entry point pyproject.toml declares, installed as a distribution's metadata, loaded
    by vLLM's own loader in a fresh process."""
    assert plugin_dist.declared_plugins() == {"loraflip": "loraflip.vllm:register"}
    plugin_dist.install_entry_points(tmp_path)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(tmp_path), str(REPO / "client/python"), os.environ.get("PYTHONPATH", "")]))
    code = ("from vllm.plugins import load_general_plugins\n"
            "load_general_plugins()\n"
            "from vllm.lora.worker_manager import WorkerLoRAManager\n"
            "from vllm.lora.resolver import LoRAResolverRegistry\n"
            "print(getattr(WorkerLoRAManager._load_adapter, '_loraflip', False),\n"
            "      'loraflip' in LoRAResolverRegistry.get_supported_resolvers())\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split()[-2:] == ["True", "True"], out.stdout + out.stderr[-2000:]


# ---- following flips ----
class Engine:
    """What Follower needs of vLLM's LLMEngine: add_lora and remove_lora, here loading through
    the plugin into a worker manager as vLLM's executor does for each worker."""

    def __init__(self):
        self.worker = worker_manager()
        self.loaded: dict[int, LoRAModel] = {}

    def add_lora(self, r) -> bool:
        self.loaded[r.lora_int_id] = self.worker._load_adapter(r)
        return True

    def remove_lora(self, lora_id: int) -> bool:
        return self.loaded.pop(lora_id, None) is not None


def test_the_follower_adds_each_new_version_and_drops_old_ones(client, daemon, name):
    lv.register()
    engine = Engine()
    follow = lv.Follower(engine, name, keep=2, runtime_dir=daemon.dir, client=client)
    with pytest.raises(loraflip.NotFound):
        follow.request()
    seen = []
    for seed in range(4):
        client.publish(name, adapter_tensors(20 + seed), config(), slots=4, history=1)
        r = follow.request()
        assert follow.request() is r, "no flip: the same request"
        seen.append(r.lora_name)
        assert sorted(engine.loaded) == sorted(x.lora_int_id for x in follow.loaded)
        assert len(engine.loaded) <= 2
    assert seen == [f"{name}@{v}" for v in range(1, 5)]
    client.rollback(name, 3)
    assert follow.request().lora_name == f"{name}@4", "a rollback keeps the newest loaded"
    follow.close()
    assert engine.loaded == {}


def test_the_models_layer_sizes_check_the_adapter_through_the_worker(client, daemon, name):
    """The worker plugin reads each LoRA layer's full input and output features from vLLM's
    model (packed q/k/v split by its output sizes) and refuses an adapter that does not fit."""
    from types import SimpleNamespace as NS
    v = client.publish(name, adapter_tensors(15), config())
    manager = worker_manager()
    qkv = NS(base_layer=NS(input_size=HIDDEN, output_size=HIDDEN + 2 * KV,
                           output_sizes=[HIDDEN, KV, KV], num_kv_head_replicas=1))
    narrower = NS(base_layer=NS(input_size=HIDDEN, output_size=HIDDEN + 32,
                                output_sizes=[HIDDEN, 16, 16], num_kv_head_replicas=1))
    down = NS(base_layer=NS(input_size=FFN, output_size=HIDDEN))
    manager._adapter_manager.modules = {"model.layers.0.self_attn.qkv_proj": qkv,
                                        "model.layers.0.mlp.down_proj": down}
    assert lv._module_shapes(manager._adapter_manager)[module_path(0, "v_proj")] == (HIDDEN, KV)
    manager._load_adapter(lv.request(name, v, runtime_dir=daemon.dir))
    manager._adapter_manager.modules["model.layers.1.self_attn.qkv_proj"] = narrower
    with pytest.raises(lv.AdapterMismatch, match="layers.1.self_attn.k_proj' .* maps 64 -> 16"):
        manager._load_adapter(lv.request(name, v, runtime_dir=daemon.dir))


def test_the_follower_of_an_async_engine_awaits_its_calls(client, daemon, name):
    import asyncio

    class AsyncEngine(Engine):  # AsyncLLM's add_lora and remove_lora are coroutines
        async def add_lora(self, r):
            return Engine.add_lora(self, r)

        async def remove_lora(self, lora_id):
            return Engine.remove_lora(self, lora_id)

    engine = AsyncEngine()
    follow = lv.Follower(engine, name, keep=1, runtime_dir=daemon.dir, client=client)
    client.publish(name, adapter_tensors(30), config(), slots=3, history=0)
    first = asyncio.run(follow.arequest())
    client.publish(name, adapter_tensors(31), config())
    second = asyncio.run(follow.arequest())
    assert (first.lora_name, second.lora_name) == (f"{name}@1", f"{name}@2")
    assert list(engine.loaded) == [second.lora_int_id]
