"""loraflip.peft.LiveModel: a transformers + PEFT model whose adapter follows the active version.
Real models (tiny Llama, random weights), a real daemon, a trainer in another process."""
from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="the PEFT integration needs torch (scripts/setup installs it)")
peft = pytest.importorskip("peft", reason="the PEFT integration needs peft (scripts/setup installs it)")

import loraflip  # noqa: E402
import loraflip.peft  # noqa: E402
import tiny_models as tm  # noqa: E402
from peft import set_peft_model_state_dict  # noqa: E402

TRAINER = str(Path(__file__).with_name("peft_trainer.py"))
Q_A = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"


def reference_output(version: int, model_dtype=torch.float32, config=None, weights_dtype=None):
    """What a plain PEFT model with `version`'s weights loaded generates."""
    ref = tm.peft_model(config, model_dtype)
    set_peft_model_state_dict(ref, tm.version_weights(version, ref, weights_dtype))
    return tm.generate(ref)


def test_generation_follows_a_trainer_in_another_process(client, daemon):
    """Every step's output equals a reference PEFT model's with that version's weights
    (bitwise), the weights are read in place (no copy), and the versions seen only go up."""
    name = "live-follow"
    versions = 4
    trainer = subprocess.Popen([sys.executable, TRAINER, daemon.dir, name, str(versions), "0.3"],
                               stderr=subprocess.PIPE, text=True)
    model = tm.peft_model()
    live = loraflip.peft.LiveModel(model, name, client=client, timeout=60)
    weight = model.base_model.model.model.layers[0].self_attn.q_proj.lora_A["default"].weight
    steps = []
    deadline = time.monotonic() + 120
    try:
        while (not steps or steps[-1][0] < versions) and time.monotonic() < deadline:
            with live.step() as version:
                with client.acquire(name, version=version) as pinned:
                    in_place = torch.from_dlpack(pinned.tensor(Q_A)).data_ptr()
                assert weight.data_ptr() == in_place, "the step's weight is not the pinned tensor"
                steps.append((version, tm.generate(model)))
    finally:
        assert trainer.wait(timeout=60) == 0, trainer.stderr.read()
    seen = [v for v, _ in steps]
    assert seen[-1] == versions, f"the live model never reached version {versions}: {seen}"
    assert seen == sorted(seen), f"versions went down: {seen}"
    assert len(set(seen)) >= 2, f"the loop saw one version only: {seen}"
    references = {v: reference_output(v) for v in set(seen)}
    for version, output in steps:
        assert torch.equal(output, references[version]), f"step at version {version} differs"
    assert live.version == versions
    live.close()


def test_model_refuses_to_run_outside_a_step_and_close_restores_it(client):
    name = "live-outside"
    model = tm.peft_model()
    own = model.base_model.model.model.layers[0].self_attn.q_proj.lora_A["default"].weight.detach().clone()
    client.publish(name, tm.version_weights(1, model), config=tm.lora_config())
    live = loraflip.peft.LiveModel(model, name, client=client)
    with pytest.raises(RuntimeError, match="bound only inside LiveModel.step"):
        tm.generate(model)
    out, version = live.generate(input_ids=torch.tensor(tm.PROMPT), max_new_tokens=2,
                                 do_sample=False, pad_token_id=0)
    assert version == 1 and out.shape == (1, len(tm.PROMPT[0]) + 2)
    live.close()
    restored = model.base_model.model.model.layers[0].self_attn.q_proj.lora_A["default"].weight
    assert torch.equal(restored, own)
    tm.generate(model)  # its own weights again: runs


def test_scaling_comes_from_the_published_config(client):
    """The published lora_alpha (and rsLoRA) decide the scaling, not the model's own config."""
    name = "live-scaling"
    published = tm.lora_config(alpha=40, use_rslora=True)
    model = tm.peft_model(tm.lora_config(alpha=16))  # alpha 16, no rsLoRA
    client.publish(name, tm.version_weights(3, model), config=published)
    live = loraflip.peft.LiveModel(model, name, client=client)
    with live.step() as version:
        output = tm.generate(model)
    q_proj = model.base_model.model.model.layers[0].self_attn.q_proj
    assert q_proj.scaling["default"] == pytest.approx(40 / 8 ** 0.5)
    ref = tm.peft_model(published)
    set_peft_model_state_dict(ref, tm.version_weights(3, ref))
    assert version == 1 and torch.equal(output, tm.generate(ref))
    live.close()


def test_an_adapter_that_does_not_fit_is_refused_naming_the_first_mismatch(client):
    model = tm.peft_model()
    other_targets = tm.peft_model(tm.lora_config(targets=["q_proj", "k_proj"]))
    client.publish("live-targets", tm.version_weights(1, other_targets),
                   config=tm.lora_config(targets=["q_proj", "k_proj"]))
    live = loraflip.peft.LiveModel(model, "live-targets", client=client)
    with pytest.raises(loraflip.peft.AdapterMismatch,
                       match=r"no tensor for 'model\.layers\.0\.self_attn\.v_proj\.lora_A\.weight'"):
        with live.step():
            pass
    other_rank = tm.peft_model(tm.lora_config(r=4))
    client.publish("live-rank", tm.version_weights(1, other_rank), config=tm.lora_config(r=4))
    live = loraflip.peft.LiveModel(model, "live-rank", client=client)
    with pytest.raises(loraflip.peft.AdapterMismatch,
                       match=r"'base_model\.model\.model\.layers\.0\.self_attn\.q_proj\.lora_A\.weight'"
                             r".* shape \(4, 64\) but the model's weight has \(8, 64\)"):
        with live.step():
            pass
    with pytest.raises(RuntimeError, match="bound only inside"):  # nothing stays bound
        tm.generate(model)



def test_an_adapter_created_again_with_other_shapes_is_checked_again(client):
    """The step checks shapes once per adapter schema: one dropped and created again under
    the same name with another rank is refused at the next step, nothing stays bound."""
    name = "live-recreated"
    model = tm.peft_model()
    client.publish(name, tm.version_weights(1, model), config=tm.lora_config())
    live = loraflip.peft.LiveModel(model, name, client=client)
    with live.step() as version:
        assert version == 1
    client.drop(name)
    other_rank = tm.peft_model(tm.lora_config(r=4))
    client.publish(name, tm.version_weights(2, other_rank), config=tm.lora_config(r=4))
    with pytest.raises(loraflip.peft.AdapterMismatch, match=r"shape \(4, 64\)"):
        with live.step():
            pass
    with pytest.raises(RuntimeError, match="bound only inside"):
        tm.generate(model)


def test_another_dtype_is_copied_with_one_warning(client, caplog):
    """A bf16 adapter in an f32 model: copied (cast) each step, one warning, right output."""
    name = "live-bf16"
    model = tm.peft_model()
    client.publish(name, tm.version_weights(2, model, torch.bfloat16), config=tm.lora_config())
    live = loraflip.peft.LiveModel(model, name, client=client)
    with caplog.at_level(logging.WARNING, logger="loraflip"):
        for _ in range(2):
            with live.step():
                output = tm.generate(model)
    copies = [r for r in caplog.records if "copying it every step" in r.getMessage()]
    assert len(copies) == 1, caplog.text
    assert torch.equal(output, reference_output(2, weights_dtype=torch.bfloat16))
    live.close()


def test_a_transformers_model_with_an_added_adapter_reads_peft_model_names(client):
    """Published from a PeftModel (base_model.model. names), served to a transformers model
    that holds the adapter itself (model.add_adapter): the names still pair up."""
    name = "live-hf"
    trainer_model = tm.peft_model()
    client.publish(name, tm.version_weights(5, trainer_model), config=tm.lora_config())
    model = tm.base_model()
    model.add_adapter(tm.lora_config())
    live = loraflip.peft.LiveModel(model, name, client=client)
    with live.step():
        output = tm.generate(model)
    assert torch.equal(output, reference_output(5))
    live.close()


def test_a_compiled_model_gets_each_version_copied_into_fixed_weights(client):
    name = "live-compiled"
    model = tm.peft_model()
    compiled = torch.compile(model, backend="aot_eager")
    live = loraflip.peft.LiveModel(compiled, name, client=client)
    assert live.mode == "copy"
    weight = model.base_model.model.model.layers[0].self_attn.q_proj.lora_A["default"].weight
    fixed = weight.data_ptr()
    ids = torch.tensor(tm.PROMPT)
    for v in (1, 2):
        client.publish(name, tm.version_weights(v, model), config=tm.lora_config())
        with live.step() as version, torch.no_grad():
            logits = compiled(input_ids=ids).logits
        assert version == v and weight.data_ptr() == fixed
        ref = tm.peft_model()
        set_peft_model_state_dict(ref, tm.version_weights(v, ref))
        with torch.no_grad():
            torch.testing.assert_close(logits, ref(input_ids=ids).logits, rtol=0, atol=1e-5)
    live.close()


def test_adapter_tensors_follow_training_and_a_reloaded_adapter():
    """AdapterTensors gives what get_peft_model_state_dict gives, after in-place updates and
    after the adapter's parameters are made anew."""
    from peft import get_peft_model_state_dict
    model = tm.peft_model()
    tensors = loraflip.peft.AdapterTensors(model)

    def same():
        want = get_peft_model_state_dict(model)
        got = tensors()
        return set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)

    assert same()
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(1.0)  # an optimizer step: in place
    assert same()
    set_peft_model_state_dict(model, tm.version_weights(9, model))  # copies in place
    assert same()
    q_proj = model.base_model.model.model.layers[0].self_attn.q_proj
    for ab in (q_proj.lora_A, q_proj.lora_B):  # new parameter objects, as a reload makes
        ab["default"].weight = torch.nn.Parameter(ab["default"].weight.detach() * 2)
    assert same()


def test_version_torch_tensors_are_the_pinned_bytes_in_place(client):
    """One export sliced into views: every tensor in place, of one dtype or of several."""
    one = {"a.lora_A.weight": torch.randn(8, 64).to(torch.bfloat16),
           "a.lora_B.weight": torch.randn(64, 8).to(torch.bfloat16)}
    mixed = {"b.lora_A.weight": torch.randn(8, 5), "b.lora_B.weight": torch.randn(7, 8).half(),
             "c.lora_A.weight": torch.randn(8, 6).to(torch.bfloat16)}
    for name, tensors in (("torch-one-dtype", one), ("torch-mixed", mixed)):
        client.publish(name, tensors, config={"r": 8})
        with client.acquire(name) as v:
            got = v.torch_tensors()
            assert set(got) == set(tensors)
            for k, want in tensors.items():
                assert got[k].dtype == want.dtype and torch.equal(got[k], want)
                assert got[k].data_ptr() == v.tensor(k).data_ptr
        del got



def test_version_torch_tensors_of_runs_and_broken_runs(client):
    """Tensors of one shape at a fixed distance come from one view unbound into pieces (a LoRA
    adapter's layers); a layer without one of the modules breaks the distance, and a lone
    shape stands alone: every tensor still holds its own bytes, in place, contiguous."""
    tensors = {}
    for layer in range(6):
        for module in ("q", "k") if layer != 2 else ("q",):
            tensors[f"l{layer}.{module}.lora_A.weight"] = torch.randn(8, 64).to(torch.bfloat16)
            tensors[f"l{layer}.{module}.lora_B.weight"] = torch.randn(64, 8).to(torch.bfloat16)
    tensors["l9.v.lora_A.weight"] = torch.randn(8, 48).to(torch.bfloat16)
    client.publish("torch-runs", tensors, config={"r": 8})
    for version in range(2):
        if version:
            client.publish("torch-runs", {k: t * 3 for k, t in tensors.items()})
        with client.acquire("torch-runs") as v:
            got = v.torch_tensors()
            assert list(got) == sorted(got, key=lambda k: v.tensor(k).data_ptr)
            assert set(got) == set(tensors)
            for k, want in tensors.items():
                want = want * 3 if version else want
                assert got[k].shape == want.shape and got[k].is_contiguous(), k
                assert torch.equal(got[k], want), k
                assert got[k].data_ptr() == v.tensor(k).data_ptr
            runs = v._pin.schema.layouts[None][3][1]
            assert max(len(names) for names, *_ in runs) > 2  # the unbound path ran
            assert any(len(names) == 1 for names, *_ in runs)  # and the lone one
        del got


def test_a_model_on_a_gpu_reads_a_device_placed_version_in_place():
    """On a GPU (skipped without one): bf16 adapter placed on cuda:0, model on cuda:0, the step's
    weights are the daemon's device tensors, the output equals a reference model's, and the pin
    is released after the stream's work."""
    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA device (scripts/gpu-check runs this on a GPU)")
    from conftest import Daemon
    d = Daemon("peft-cuda", extra=["--devices", "0", "--device-arena-size", "64M"]).start()
    try:
        client = loraflip.Client(d.dir)
        model = tm.peft_model(dtype=torch.bfloat16).cuda()
        client.publish("live-cuda", tm.version_weights(4, model, torch.bfloat16),
                       config=tm.lora_config(), placement="cuda:0")
        live = loraflip.peft.LiveModel(model, "live-cuda", client=client)
        weight = model.base_model.model.model.layers[0].self_attn.q_proj.lora_A["default"].weight
        with live.step() as version:
            with client.acquire("live-cuda") as pinned:
                assert weight.data_ptr() == pinned.tensor(Q_A).data_ptr
            ids = torch.tensor(tm.PROMPT, device="cuda")
            logits = model(input_ids=ids).logits
        ref = tm.peft_model(dtype=torch.bfloat16).cuda()
        set_peft_model_state_dict(ref, tm.version_weights(4, ref, torch.bfloat16))
        assert version == 1 and torch.equal(logits, ref(input_ids=ids).logits)
        torch.cuda.synchronize()
        live.close()
        client.close()
    finally:
        d.stop()
