"""The Python client against a real loraflipd: every public function, and bad inputs that must
raise clear exceptions and change nothing."""
from __future__ import annotations

import ctypes
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import loraflip
from loraflip import _dlpack, _lib
from adapters import CONFIG, peft_state

REPO = Path(__file__).resolve().parents[2]


def state_of(client, name):
    """What must not change after a refused call."""
    i = client.info(name)
    return i["version"], i["last_version"], i["counters"], i["census"]


# ---- the library and its bindings ----

def test_every_function_of_the_header_has_a_typed_binding_with_its_declaration():
    header = (REPO / "include/loraflip.h").read_text()
    names = re.findall(r"LF_API\s+[\w\s\*]+?\b(lf_\w+)\s*\(", header)
    assert len(names) > 40
    source = (REPO / "client/python/loraflip/_lib.py").read_text()
    for n in names:
        fn = getattr(_lib, n)
        assert fn.argtypes is not None, n
        # restype is set on every binding: None only where the C function returns void.
        assert (fn.restype is None) == bool(re.search(r"LF_API void " + n + r"\(", header)), n
        # The C declaration sits in the comment above the binding.
        assert re.search(r"#[^\n]*\b" + n + r"\(", source), n


def test_a_missing_library_error_lists_every_path_tried(tmp_path):
    pkg = tmp_path / "loraflip"
    pkg.mkdir()
    for f in (REPO / "client/python/loraflip").glob("*.py"):
        (pkg / f.name).write_text(f.read_text())
    env = dict(os.environ, LORAFLIP_LIBRARY="/nonexistent/libloraflip.so", LD_LIBRARY_PATH="")
    r = subprocess.run([sys.executable, "-c", "import loraflip"], cwd=tmp_path, env=env,
                       capture_output=True, text=True)
    assert r.returncode != 0
    assert "LibraryNotFound" in r.stderr
    assert "/nonexistent/libloraflip.so ($LORAFLIP_LIBRARY)" in r.stderr
    assert "next to the package" in r.stderr and "meson build folder" in r.stderr


def test_error_classes_carry_code_and_message():
    from loraflip._errors import error_for
    e = error_for(_lib.LF_E_NOT_FOUND, "no adapter 'x'")
    assert isinstance(e, loraflip.NotFound) and isinstance(e, LookupError)
    assert e.code == -2 and e.message == "no adapter 'x'" and "code -2" in str(e)
    assert isinstance(error_for(_lib.LF_E_TIMEOUT, ""), TimeoutError)
    assert isinstance(error_for(_lib.LF_E_CONNECTION, "x"), ConnectionError)
    assert isinstance(error_for(-999, "odd"), loraflip.LoraflipError)
    assert loraflip.dtype_code("bf16") == 3 and loraflip.dtype_name(2) == "f16"


def test_a_client_without_a_daemon_says_so(tmp_path):
    with pytest.raises(loraflip.DaemonUnreachable) as e:
        loraflip.Client(str(tmp_path / "nothing-here"))
    assert e.value.code == _lib.LF_E_CONNECTION and "nothing-here" in str(e.value)


# ---- publish and acquire ----

def test_publish_creates_on_first_use_and_readers_see_every_tensor(client, name):
    sd = peft_state()
    assert client.publish(name, sd, config=CONFIG) == 1
    assert client.publish(name, peft_state(seed=1)) == 2
    info = client.info(name)
    assert [t["name"] for t in info["tensors"]] == list(sd)  # PEFT names kept, in order
    assert info["lora"]["rank"] == 4 and info["lora"]["alpha"] == 8
    assert info["lora"]["target_modules"] == ["q_proj", "v_proj"]
    assert json.loads(info["metadata"])["peft_config"]["r"] == 4
    assert any(a["name"] == name and a["version"] == 2 for a in client.list())
    want = peft_state(seed=1)
    with client.acquire(name) as v:
        assert v.version == 2 and set(v) == set(want) and len(v) == len(want)
        for t, a in want.items():
            got = v[t]
            assert got.dtype == np.float32 and not got.flags.writeable
            assert np.array_equal(got, a)
    with client.acquire(name, version=1) as v:  # the kept history
        assert all(np.array_equal(v[t], a) for t, a in sd.items())
    assert client.active_version(name) == 2
    assert client.stats()["adapters"] >= 1


def test_a_peft_loraconfig_like_object_is_accepted(client, name):
    class LoraConfig:  # what PEFT's LoraConfig looks like to us
        def __init__(self):
            self.r, self.lora_alpha, self.use_rslora = 4, 16, False
            self.target_modules = {"v_proj", "q_proj"}

        def to_dict(self):
            return dict(vars(self), peft_type="LORA", task_type="CAUSAL_LM")

    client.publish(name, peft_state(), config=LoraConfig())
    info = client.info(name)
    assert info["lora"]["alpha"] == 16 and info["lora"]["target_modules"] == ["q_proj", "v_proj"]
    assert json.loads(info["metadata"])["peft_config"]["task_type"] == "CAUSAL_LM"


def test_bad_publishes_raise_and_change_nothing(client, name):
    sd = peft_state()
    client.publish(name, sd, config=CONFIG)
    before = state_of(client, name)
    first = next(iter(sd))
    bad = [
        (dict(sd, **{first: sd[first][:, :16]}), loraflip.InvalidArgument, "shape"),
        (dict(sd, **{first: sd[first].astype(np.float64)}), loraflip.InvalidArgument, "f64"),
        ({k: a for k, a in sd.items() if k != first}, loraflip.InvalidArgument, "missing"),
        (dict(sd, extra=np.zeros(3, np.float32)), loraflip.InvalidArgument, "unknown"),
        (dict(sd, **{first: sd[first].astype(np.complex64)}), loraflip.InvalidArgument, "dtype"),
        ({}, loraflip.InvalidArgument, "non-empty"),
    ]
    for tensors, exc, words in bad:
        with pytest.raises(exc, match=words):
            client.publish(name, tensors)
    with pytest.raises(loraflip.InvalidArgument, match="r=8"):
        client.publish(name, sd, config=dict(CONFIG, r=8))
    nan = dict(sd, **{first: np.full_like(sd[first], np.nan)})
    with pytest.raises(loraflip.ValidationError):
        client.publish(name, nan)
    assert state_of(client, name)[0:2] == before[0:2]
    with pytest.raises(loraflip.NotFound, match="pass config"):
        client.publish(name + "-new", sd)
    with pytest.raises(loraflip.InvalidArgument, match="does not match r=2"):
        client.publish(name + "-new", sd, config=dict(CONFIG, r=2))
    with pytest.raises(loraflip.InvalidArgument, match="bad adapter name"):
        client.publish("../etc/passwd", sd, config=CONFIG)
    with pytest.raises(loraflip.NotFound):
        client.info(name + "-new")
    with client.acquire(name) as v:
        assert all(np.array_equal(v[t], a) for t, a in sd.items())


def test_cast_converts_floats_and_bf16_round_trips_as_bits(client, name):
    sd16 = {k: np.zeros(a.shape, np.float16) for k, a in peft_state().items()}
    client.publish(name, sd16, config=CONFIG)
    src = peft_state(seed=3)
    with pytest.raises(loraflip.InvalidArgument, match="cast=True"):
        client.publish(name, src)
    client.publish(name, src, cast=True)
    with client.acquire(name) as v:
        for t, a in src.items():
            assert np.array_equal(v[t], a.astype(np.float16))
    bf = name + "-bf16"
    spec = {k: ("bf16", a.shape) for k, a in src.items()}
    client.create(bf, spec, CONFIG)
    values = {k: np.round(a * 4) / 4 for k, a in src.items()}  # exact in bf16
    client.publish(bf, values, cast=True)
    with client.acquire(bf) as v:
        t = next(iter(src))
        try:  # bf16 arrays need ml_dtypes (vllm brings it in); without it, a clear refusal
            import ml_dtypes
        except ImportError:
            with pytest.raises(TypeError, match="bf16"):
                v[t]
        else:
            assert v[t].dtype == np.dtype(ml_dtypes.bfloat16)
            assert np.array_equal(v[t].astype(np.float32), values[t])
        bits = v.bits(t).astype(np.uint32) << 16
        assert np.array_equal(bits.view(np.float32), values[t])
        assert v.tensor(t).dtype == "bf16"


def test_acquire_errors_are_clear(client, name):
    client.publish(name, peft_state(), config=CONFIG)
    with pytest.raises(loraflip.NotFound):
        with client.acquire(name + "-none"):
            pass
    with pytest.raises(loraflip.NoVersion):
        with client.acquire(name, min_version=5):
            pass
    with pytest.raises(loraflip.NoVersion):
        with client.acquire(name, version=7):
            pass
    with client.acquire(name) as v:
        with pytest.raises(loraflip.NotFound, match="no tensor"):
            v["nope"]
    empty = name + "-empty"
    client.create(empty, {"w": ("f32", (4,))})
    with pytest.raises(loraflip.NoVersion):
        with client.acquire(empty):
            pass
    assert client.active_version(empty) == 0


def test_released_views_raise_instead_of_reading(client, name):
    sd = peft_state()
    client.publish(name, sd, config=CONFIG)
    t = next(iter(sd))
    with client.acquire(name) as v:
        a = v[t]
        row = a[1]
        tv = v.tensor(t)
        assert np.allclose(a @ np.ones(a.shape[1], np.float32), sd[t].sum(axis=1), atol=1e-4)
        with pytest.raises(ValueError):
            a[0, 0] = 1.0  # readers map data read-only
    assert v.released and a.released and "released" in repr(a)
    uses = [lambda: a[0], lambda: a + 1, lambda: np.sum(a), lambda: a.sum(), lambda: a.copy(),
            lambda: a.T, lambda: a.reshape(-1), lambda: a.tolist(), lambda: str(a),
            lambda: a @ np.ones(a.shape[1], np.float32), lambda: np.concatenate([a, a]),
            lambda: float(row[0]), lambda: row * 2, lambda: list(a), lambda: a.astype(np.float64),
            lambda: v[t], lambda: v.array(t), lambda: tv.data_ptr, lambda: tv.numpy(),
            lambda: np.from_dlpack(tv), lambda: np.from_dlpack(a), lambda: a.tobytes()]
    for use in uses:
        with pytest.raises(loraflip.ReleasedError):
            use()


def test_dlpack_views_keep_their_version_pinned_until_freed(client, name):
    sd = peft_state()
    sd16 = {k: a.astype(np.float16) for k, a in sd.items()}
    client.publish(name, sd16, config=CONFIG)
    t = next(iter(sd))
    pins_before = client.stats()["pins"]
    with client.acquire(name) as v:
        tv = v.tensor(t)
        assert tv.__dlpack_device__() == (1, 0) and tv.shape == sd[t].shape
        n = np.from_dlpack(tv)
        m = np.from_dlpack(v[t])  # a PinnedArray exports through the same pin
        assert n.dtype == np.float16 and not n.flags.writeable
        assert np.array_equal(n, sd16[t]) and np.array_equal(m, sd16[t])
    # The block ended but the consumers still hold the memory: the pin stays.
    assert wait_for(lambda: client.stats()["pins"] == pins_before + 1)
    assert np.array_equal(n, sd16[t])
    del n, m
    assert _dlpack.live_capsules() == 0
    assert wait_for(lambda: client.stats()["pins"] == pins_before)


def test_a_bf16_capsule_says_kDLBfloat_16_bits(client, name):
    client.create(name, {"w": ("bf16", (2, 3))})
    client.publish(name, {"w": loraflip.RawTensor("bf16", (2, 3), np.arange(6, dtype=np.uint16))})
    with client.acquire(name) as v:
        cap = v.tensor("w").__dlpack__()
        api = ctypes.PyDLL(None)
        api.PyCapsule_GetPointer.restype = ctypes.c_void_p
        api.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
        m = _dlpack.DLManagedTensor.from_address(api.PyCapsule_GetPointer(cap, b"dltensor"))
        dt = m.dl_tensor.dtype
        assert (dt.code, dt.bits, dt.lanes) == (_dlpack.kDLBfloat, 16, 1)
        assert [m.dl_tensor.shape[i] for i in range(m.dl_tensor.ndim)] == [2, 3]
        assert ctypes.cast(m.dl_tensor.data, ctypes.POINTER(ctypes.c_uint16))[5] == 5
        vcap = v.tensor("w").__dlpack__(max_version=(1, 0))
        mv = _dlpack.DLManagedTensorVersioned.from_address(
            api.PyCapsule_GetPointer(vcap, b"dltensor_versioned"))
        assert mv.flags & _dlpack.DLPACK_FLAG_BITMASK_READ_ONLY and mv.version.major == 1
        del cap, vcap, m, mv  # unconsumed capsules delete their tensors themselves
    assert _dlpack.live_capsules() == 0


def test_torch_reads_bf16_and_publishes_tensors(client, name):
    torch = pytest.importorskip("torch")
    sd = {k: torch.from_numpy(a).to(torch.bfloat16) for k, a in peft_state().items()}
    client.publish(name, sd, config=CONFIG)
    with client.acquire(name) as v:
        for k, want in sd.items():
            got = torch.from_dlpack(v.tensor(k))
            assert got.dtype == torch.bfloat16 and torch.equal(got, want)



def test_torch_sources_of_every_kind_publish_their_values(client, name):
    """Publish takes plain contiguous CPU tensors and parameters without a copy of their own,
    and everything else (transposed, sliced, other dtypes with cast, tensors the first publish
    saw as parameters and a later one as views) through the general path: every version holds
    exactly the values given, and a wrong dtype or shape is refused by name before the slot is
    touched."""
    torch = pytest.importorskip("torch")
    base = {k: torch.from_numpy(a).to(torch.bfloat16) for k, a in peft_state().items()}
    client.publish(name, base, config=CONFIG)
    first, second = list(base)[:2]
    kinds = [
        {k: torch.nn.Parameter(t.clone()) for k, t in base.items()},  # requires_grad
        {k: t.t().contiguous().t() if t.ndim == 2 else t for k, t in base.items()},  # strided
        {k: (t.float() * 2) for k, t in base.items()},  # fp32 into bf16, with cast
        {k: torch.cat([t, t])[: t.shape[0]] for k, t in base.items()},  # a view of a bigger one
    ]
    from loraflip._sources import source
    plain = kinds[0][first]
    want = (loraflip._lib.LF_DTYPE_BF16, tuple(plain.shape))
    assert source(first, plain, want, False).keep is plain  # no copy, no detach: the fast path
    assert source(first, kinds[1][first], want, False).keep is not kinds[1][first]
    for i, tensors in enumerate(kinds):
        version = client.publish(name, tensors, cast=(i == 2))
        with client.acquire(name) as v:
            assert v.version == version
            for k, t in tensors.items():
                assert torch.equal(torch.from_dlpack(v.tensor(k)), t.detach().to(torch.bfloat16)), k
    before = state_of(client, name)
    wrong_dtype = dict(base, **{first: base[first].float()})
    with pytest.raises(loraflip.InvalidArgument, match=f"tensor '{first}' is f32"):
        client.publish(name, wrong_dtype)
    wrong_shape = dict(base, **{second: base[second].reshape(-1)})
    with pytest.raises(loraflip.InvalidArgument, match=f"tensor '{second}' has shape"):
        client.publish(name, wrong_shape)
    assert state_of(client, name)[0] == before[0]


# ---- writes ----

def test_a_writer_writes_in_place_and_an_exception_aborts(client, name):
    sd = peft_state()
    client.publish(name, sd, config=CONFIG)
    with client.write(name) as w:
        assert w.names() == list(sd)
        for t in w.names():
            w[t][...] = 2.0
        w.copy_in(next(iter(sd)), np.full(sd[next(iter(sd))].shape, 3.0, np.float32))
        kept = w[next(iter(sd))]
    assert w.version == 2 and w.ended
    with pytest.raises(loraflip.ReleasedError):
        kept[0]
    with pytest.raises(loraflip.ReleasedError):
        w[next(iter(sd))]
    with client.acquire(name) as v:
        assert float(v[next(iter(sd))][0, 0]) == 3.0 and float(v[list(sd)[1]][0, 0]) == 2.0
    before = state_of(client, name)
    with pytest.raises(RuntimeError):
        with client.write(name) as w:
            w[next(iter(sd))][...] = 9.0
            raise RuntimeError("trainer crashed")
    after = state_of(client, name)
    assert after[0] == before[0] and after[2]["aborts"] == before[2]["aborts"] + 1
    with client.write(name) as w:
        with pytest.raises(loraflip.InvalidArgument, match="shape"):
            w.copy_in(next(iter(sd)), np.zeros((2, 2), np.float32))
        with pytest.raises(loraflip.NotFound):
            w["nope"]
        w.abort()
    assert state_of(client, name)[0] == before[0]


def test_no_free_slot_when_readers_pin_every_slot(client, name):
    sd = peft_state()
    client.create(name, sd, CONFIG, slots=2, history=0)
    client.publish(name, sd)
    with client.write(name) as w:  # holds the second slot
        with pytest.raises(loraflip.NoFreeSlot):
            client.write(name, retry_s=0)
        for t in sd:
            w.copy_in(t, sd[t])
    with client.acquire(name):  # version 2 active; version 1's slot is free again
        client.publish(name, sd, retry_s=0)
        with client.acquire(name):  # now both slots are pinned
            with pytest.raises(loraflip.NoFreeSlot):
                client.publish(name, sd, retry_s=0)
    assert client.publish(name, sd, retry_s=0) == 4


def test_rollback_and_drop(client, name):
    for seed in range(3):
        client.publish(name, peft_state(seed=seed), config=CONFIG)
    client.rollback(name, 2)
    assert client.active_version(name) == 2
    with client.acquire(name) as v:
        assert v.version == 2
    with pytest.raises(loraflip.NoVersion):
        client.rollback(name, 99)
    assert client.publish(name, peft_state()) == 4
    with client.acquire(name) as v:
        client.drop(name)
        assert np.array_equal(v[next(iter(v))], peft_state()[next(iter(v))])  # still pinned
    with pytest.raises(loraflip.NotFound):
        client.info(name)
    with pytest.raises(loraflip.Stale):
        with client.acquire(name):
            pass
    with pytest.raises(loraflip.NotFound):
        client.drop(name)


def test_acquiring_a_dropped_adapter_says_stale_as_the_c_api_does(daemon, client, name):
    client.publish(name, peft_state(), config=CONFIG)
    reader = _lib.lf_reader_p()
    assert _lib.lf_reader_open(daemon.dir.encode(), ctypes.byref(reader)) == _lib.LF_OK
    try:
        ref = _lib.lf_adapter_ref_t()
        assert _lib.lf_reader_find(reader, name.encode(), ctypes.byref(ref)) == _lib.LF_OK
        with client.acquire(name) as v:  # this thread has looked the name up too
            assert v.version == 1
        client.drop(name)
        pin = _lib.lf_pin_p()
        c_rc = _lib.lf_reader_acquire(reader, ref.value, 0, ctypes.byref(pin))
        assert c_rc == _lib.LF_E_STALE
        for _ in range(2):  # the same answer each time, as the C reference keeps giving
            with pytest.raises(loraflip.Stale, match=f"'{name}' was dropped") as e:
                with client.acquire(name):
                    pass
            assert e.value.code == c_rc
        with pytest.raises(loraflip.Stale):
            client.active_version(name)
        with pytest.raises(loraflip.Stale):
            client.wait(name, 0, timeout=0)
        # A name never looked up before the drop is unknown, in C and in Python alike.
        assert _lib.lf_reader_find(reader, name.encode(), ctypes.byref(ref)) == _lib.LF_E_NOT_FOUND
        with loraflip.Client(daemon.dir) as fresh:
            with pytest.raises(loraflip.NotFound):
                with fresh.acquire(name):
                    pass
        # Created again under the same name: acquire by name follows it.
        client.publish(name, peft_state(seed=1), config=CONFIG)
        with client.acquire(name) as v:
            assert v.version == 1
        assert client.active_version(name) == 1
    finally:
        _lib.lf_reader_close(reader)


def test_a_full_adapter_table_counts_the_records_dropped_adapters_still_hold():
    import uuid
    from conftest import Daemon
    d = Daemon("tbl", extra=["--max-adapters", "3"]).start()
    try:
        with loraflip.Client(d.dir) as c:
            names = [f"full-{uuid.uuid4().hex[:6]}-{i}" for i in range(3)]
            for n in names:
                c.publish(n, peft_state(), config=CONFIG)
            with c.acquire(names[0]):
                c.drop(names[0])  # pinned: its record stays taken
                assert len(c.list()) == 2
                with pytest.raises(loraflip.TableFull,
                                   match=r"3 records, 1 of them held by dropped adapters"):
                    c.publish(names[0], peft_state(), config=CONFIG)
            deadline = time.monotonic() + 5  # the reaper frees it (every 100 ms by default)
            while True:
                try:
                    c.publish(names[0], peft_state(), config=CONFIG)
                    break
                except loraflip.TableFull:
                    assert time.monotonic() < deadline
                    time.sleep(0.05)
    finally:
        d.stop()


# ---- waiting and events ----

def test_wait_returns_the_newer_version_or_times_out(client, name):
    client.publish(name, peft_state(), config=CONFIG)
    t0 = time.monotonic()
    with pytest.raises(loraflip.Timeout):
        client.wait(name, newer_than=1, timeout=0.2)
    assert time.monotonic() - t0 >= 0.19
    later = threading.Timer(0.1, lambda: client.publish(name, peft_state()))
    later.start()
    assert client.wait(name, newer_than=1, timeout=5) == 2
    later.join()
    assert client.wait(name, newer_than=0, timeout=0) == 2


def test_a_wait_that_times_out_names_the_callers_timeout(client, name, monkeypatch):
    client.publish(name, peft_state(), config=CONFIG)
    asked = []  # timeout_ms of every lf_reader_wait call
    real = _lib.lf_reader_wait

    def spy(reader, ref, version, timeout_ms, out):
        asked.append(timeout_ms)
        return real(reader, ref, version, timeout_ms, out)

    monkeypatch.setattr(_lib, "lf_reader_wait", spy)
    t0 = time.monotonic()
    with pytest.raises(loraflip.Timeout, match="no version of '.*' newer than 1 within 500 ms"):
        client.wait(name, newer_than=1, timeout=0.5)
    assert time.monotonic() - t0 >= 0.5
    # Waited in slices (Ctrl-C stays responsive between them), none of them 0 ms: a slice
    # rounded down to 0 would poll and give up early.
    assert 0 not in asked and max(asked) == 200 and len(asked) >= 3
    asked.clear()
    with pytest.raises(loraflip.Timeout, match="within 0.5 ms"):
        client.wait(name, newer_than=1, timeout=0.0005)
    assert asked == [1]  # rounded up, not down to a poll
    asked.clear()
    with pytest.raises(loraflip.Timeout, match="within 0 ms"):
        client.wait(name, newer_than=1, timeout=0)
    assert asked == [0]


def test_watch_yields_flip_events(client, name):
    client.publish(name, peft_state(), config=CONFIG)
    with client.watch(name, timeout=2) as events:
        time.sleep(0.2)  # ZeroMQ subscriptions take a moment to reach the publisher
        for _ in range(3):
            client.publish(name, peft_state())
        seen = []
        for e in events:
            assert e.adapter == name
            assert (e.kind, e.previous, e.seq, e.missed) == ("commit", e.version - 1, e.version, 0)
            assert abs(e.unix_ns / 1e9 - time.time()) < 60
            seen.append(e.version)
            if e.version == 4:
                break
        client.rollback(name, 3)
        e = events.next(timeout=2)
        assert (e.kind, e.version, e.previous, e.seq) == ("rollback", 3, 4, 5)
    assert seen == [2, 3, 4]
    with pytest.raises(loraflip.InvalidArgument):
        client.watch("bad name")


# ---- files ----

def test_export_and_publish_file_round_trip_with_safetensors(client, name, tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    sd = peft_state()
    client.publish(name, sd, config=CONFIG)
    folder = client.export(name, tmp_path / "adapter")
    cfg = json.loads((folder / "adapter_config.json").read_text())
    assert cfg["r"] == 4 and cfg["target_modules"] == ["q_proj", "v_proj"]
    back = safetensors_numpy.load_file(str(folder / "adapter_model.safetensors"))
    assert set(back) == set(sd) and all(np.array_equal(back[k], sd[k]) for k in sd)
    # A folder creates a new adapter from its adapter_config.json.
    assert client.publish_file(name + "-copy", folder) == 1
    with client.acquire(name + "-copy") as v:
        assert all(np.array_equal(v[k], sd[k]) for k in sd)
    # A file written by the safetensors library.
    new = peft_state(seed=5)
    safetensors_numpy.save_file(new, str(tmp_path / "step.safetensors"))
    assert client.publish_file(name, tmp_path / "step.safetensors") == 2
    out = client.export(name, tmp_path / "v1.safetensors", version=1)
    assert all(np.array_equal(safetensors_numpy.load_file(str(out))[k], sd[k]) for k in sd)
    with pytest.raises(FileNotFoundError):
        client.publish_file(name, tmp_path)
    (tmp_path / "junk.safetensors").write_bytes(b"\x01\x02")
    with pytest.raises(ValueError, match="not a safetensors"):
        client.publish_file(name, tmp_path / "junk.safetensors")
    assert client.active_version(name) == 2


# ---- the client's life ----

def test_a_closed_client_refuses_every_call(daemon, name):
    c = loraflip.Client(daemon.dir)
    c.publish(name, peft_state(), config=CONFIG)
    with c.acquire(name) as v:
        a = v[next(iter(v))]
        c.close()
        with pytest.raises(loraflip.ReleasedError):
            a[0]
    assert c.closed
    calls = [lambda: c.publish(name, peft_state()), lambda: c.write(name), lambda: c.list(),
             lambda: c.info(name), lambda: c.stats(), lambda: c.rollback(name, 1),
             lambda: c.drop(name), lambda: c.acquire(name).__enter__(), lambda: c.wait(name),
             lambda: c.watch(name), lambda: c.active_version(name),
             lambda: c.create(name + "x", {"w": ("f32", (1,))}),
             lambda: c.export(name, "/tmp/never"), lambda: c.publish_file(name, "/tmp/never")]
    for call in calls:
        with pytest.raises((loraflip.ClosedError, FileNotFoundError)):
            call()
    c.close()  # idempotent
    with loraflip.Client(daemon.dir) as c2:
        assert c2.active_version(name) == 1


def test_closing_aborts_an_open_write(daemon, name):
    c = loraflip.Client(daemon.dir)
    c.publish(name, peft_state(), config=CONFIG)
    w = c.write(name)
    c.close()
    assert w.ended
    with loraflip.Client(daemon.dir) as c2:
        assert c2.info(name)["counters"]["aborts"] == 1


def test_module_level_functions_use_one_default_client(daemon, name):
    loraflip.connect(daemon.dir)
    try:
        assert loraflip.publish(name, peft_state(), config=CONFIG) == 1
        with loraflip.write(name) as w:
            for t in w.names():
                w[t][...] = 1
        assert loraflip.active_version(name) == 2
        with loraflip.acquire(name, min_version=2) as v:
            assert v.version == 2
        assert loraflip.wait(name, 1, timeout=1) == 2
        assert loraflip.info(name)["version"] == 2
        assert any(a["name"] == name for a in loraflip.list())
        assert loraflip.stats()["adapters"] >= 1
        loraflip.rollback(name, 1)
        with loraflip.watch(name, timeout=0.1) as events:
            assert list(events) == []
        loraflip.create(name + "-b", {"w": ("f32", (2,))})
        loraflip.drop(name + "-b")
        loraflip.drop(name)
    finally:
        loraflip.default_client().close()


def test_each_thread_reads_through_its_own_reader(client, name):
    sd = peft_state()
    client.publish(name, sd, config=CONFIG)
    errors = []

    def read():
        try:
            for _ in range(200):
                with client.acquire(name) as v:
                    for t, a in sd.items():
                        if not np.array_equal(v[t], a):
                            errors.append(t)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=read) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert client.stats()["readers"] >= 4


def wait_for(cond, timeout=2.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


def test_publish_asks_again_when_a_commit_goes_unanswered(caplog):
    """The daemon freezes with the commit in flight (as a restart or a stall would look to the
    client): the commit times out, publish asks again, and the answer is the one version the
    first commit made, with nothing published twice."""
    import signal
    from conftest import Daemon
    d = Daemon("stall").start()
    try:
        c = loraflip.Client(d.dir, timeout_ms=300)
        sd = peft_state()
        assert c.publish("stall", sd, config=CONFIG) == 1
        commit = loraflip.Writer.commit
        calls = []

        def stalled_commit(self):
            if not calls:  # the first commit: freeze the daemon for longer than two timeouts
                os.kill(d.proc.pid, signal.SIGSTOP)
                threading.Timer(0.7, os.kill, (d.proc.pid, signal.SIGCONT)).start()
            calls.append(1)
            return commit(self)

        loraflip.Writer.commit = stalled_commit
        try:
            with caplog.at_level("WARNING", logger="loraflip"):
                version = c.publish("stall", peft_state(seed=5))
        finally:
            loraflip.Writer.commit = commit
        assert version == 2
        assert len(calls) >= 2  # it did time out and ask again
        assert "asking again" in caplog.text
        info = c.info("stall")
        assert info["version"] == 2 and info["last_version"] == 2  # one flip, not two
        assert info["census"]["writing"] == 0 and info["census"]["abandoned"] == 0
        c.close()
    finally:
        os.kill(d.proc.pid, signal.SIGCONT)
        d.stop()
