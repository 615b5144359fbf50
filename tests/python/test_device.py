"""Device placement from Python, through a daemon whose GPUs are stood in for by POSIX shared
memory (`--device-backend host`): views carry device >= 0 exactly as on a GPU, but their
pointers are host-addressable, so these tests can read the bytes back with ctypes. On a real
GPU those pointers are device memory and must never be read by the CPU (numpy views of them
are refused, here too). The torch CUDA path runs only where torch sees a GPU."""
from __future__ import annotations

import ctypes
import os
import time

import numpy as np
import pytest

import loraflip
from loraflip import _dlpack

from conftest import Daemon
from adapters import CONFIG, peft_state

kDLCUDA = 2


def device_bytes(t: loraflip.Tensor) -> bytes:
    # Valid only because the host stand-in's "device memory" is shared memory mapped into this
    # process; on a real GPU this address is not readable by the CPU.
    return ctypes.string_at(t.data_ptr, t.nbytes)


@pytest.fixture(scope="module")
def gpu_daemon():
    d = Daemon("dev", extra=["--devices", "0,1", "--device-backend", "host",
                             "--device-arena-size", "16M"]).start()
    yield d
    d.stop()


@pytest.fixture
def gpus(gpu_daemon):
    c = loraflip.Client(gpu_daemon.dir)
    yield c
    c.close()


def test_publish_numpy_into_two_devices_and_read_each_copy(gpus, name):
    state = peft_state(1)
    v = gpus.publish(name, state, CONFIG, placement="cuda:0,1")
    assert gpus.info(name)["placement"] == "cuda:0,1"
    with gpus.acquire(name) as snap:
        assert snap.version == v and snap.device == 0
        for tname, want in state.items():
            t0 = snap.tensor(tname)
            assert t0.device == 0 and t0.__dlpack_device__() == (kDLCUDA, 0)
            cai = t0.__cuda_array_interface__
            assert cai["shape"] == want.shape and cai["typestr"] == "<f4"
            assert cai["strides"] is None and cai["version"] == 3
            ptr, readonly = cai["data"]
            assert ptr != 0 and ptr == t0.data_ptr and readonly is True
            t1 = snap.tensor(tname, device=1)
            assert t1.device == 1 and t1.__dlpack_device__() == (kDLCUDA, 1)
            assert t1.__cuda_array_interface__["data"][0] not in (0, ptr)
            # The daemon copied the version to device 1 before the flip: same bytes on both.
            assert device_bytes(t0) == device_bytes(t1) == want.tobytes()
            assert snap.tensor(tname, device="cuda:1").data_ptr == t1.data_ptr
            assert snap.tensor(tname, device=0).data_ptr == ptr
        with pytest.raises(loraflip.NotFound, match="no copy on cuda:7"):
            snap.tensor(tname, device=7)
        with pytest.raises(loraflip.InvalidArgument):
            snap.tensor(tname, device="gpu1")


def test_every_version_reaches_every_device(gpus, name):
    gpus.create(name, peft_state(), CONFIG, placement="cuda:1,0")  # device 1 is written to
    assert gpus.info(name)["placement"] == "cuda:1,0"
    for seed in range(2, 6):
        state = peft_state(seed)
        v = gpus.publish(name, state)
        with gpus.acquire(name, min_version=v) as snap:
            assert snap.version == v and snap.device == 1
            for tname, want in state.items():
                for dev in (0, 1):
                    assert device_bytes(snap.tensor(tname, device=dev)) == want.tobytes()


def test_numpy_views_of_device_memory_are_refused(gpus, name):
    state = peft_state(3)
    gpus.publish(name, state, CONFIG, placement="cuda:0")
    tname = next(iter(state))
    with gpus.acquire(name) as snap:
        for get in (lambda: snap[tname], lambda: snap.array(tname), lambda: snap.bits(tname),
                    lambda: snap.tensor(tname).numpy(), lambda: snap.copy()):
            with pytest.raises(loraflip.Unsupported, match="GPU memory.*DLPack") as e:
                get()
            assert e.value.code == loraflip._lib.LF_E_UNSUPPORTED
    with gpus.write(name) as w:
        with pytest.raises(loraflip.Unsupported, match="copy_in"):
            w[tname]
        t = w.tensor(tname)
        assert t.device == 0 and t.__cuda_array_interface__["data"][1] is False  # writable
        new = {k: a + 1 for k, a in state.items()}
        for k, a in new.items():
            w.copy_in(k, a)  # numpy: a synchronous host-to-device copy
    with gpus.acquire(name, min_version=w.version) as snap:
        for k, a in new.items():
            assert device_bytes(snap.tensor(k)) == a.tobytes()


def test_device_exports_are_dlpack_cuda_and_stop_at_release(gpus, name):
    state = peft_state(4, dtype=np.float16)
    gpus.publish(name, state, CONFIG, placement="cuda:0,1")
    tname = next(iter(state))
    with gpus.acquire(name) as snap:
        t = snap.tensor(tname, device=1)
        assert t.__cuda_array_interface__["typestr"] == "<f2"
        before = _dlpack.live_capsules()
        cap = t.__dlpack__()
        # Read the DLTensor the capsule carries: CUDA device 1, the view's own address.
        api = ctypes.pythonapi
        api.PyCapsule_GetPointer.restype = ctypes.c_void_p
        api.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
        managed = _dlpack.DLManagedTensor.from_address(api.PyCapsule_GetPointer(cap, b"dltensor"))
        dl = managed.dl_tensor
        assert (dl.device.device_type, dl.device.device_id) == (kDLCUDA, 1)
        assert dl.data == t.data_ptr and dl.ndim == 2
        assert (dl.dtype.code, dl.dtype.bits) == (_dlpack.kDLFloat, 16)
        with pytest.raises(BufferError):
            t.__dlpack__(dl_device=(kDLCUDA, 0))
        del cap
        assert _dlpack.live_capsules() == before
    with pytest.raises(loraflip.ReleasedError):
        t.__cuda_array_interface__
    with pytest.raises(loraflip.ReleasedError):
        t.data_ptr
    with pytest.raises(loraflip.ReleasedError):
        t.__dlpack__()
    with pytest.raises(loraflip.ReleasedError):
        snap.tensor(tname, device=0)


def test_bf16_device_tensors_have_an_opaque_typestr(gpus, name):
    gpus.create(name, {"x.lora_A.weight": ("bf16", (4, 8))}, placement="cuda:0")
    with gpus.write(name) as w:
        w.copy_in("x.lora_A.weight", loraflip.RawTensor("bf16", (4, 8), np.zeros(32, np.uint16)))
    with gpus.acquire(name) as snap:
        assert snap.tensor("x.lora_A.weight").__cuda_array_interface__["typestr"] == "<V2"


def test_host_tensors_have_no_cuda_array_interface(gpus, name):
    gpus.publish(name, peft_state(), CONFIG)  # placement: host
    assert gpus.info(name)["placement"] == "host"
    with gpus.acquire(name) as snap:
        t = snap.tensor(next(iter(snap)))
        assert t.device == -1 and not hasattr(t, "__cuda_array_interface__")
        assert snap.device == -1
        with pytest.raises(loraflip.NotFound):
            snap.tensor(t.name, device=0)


@pytest.mark.parametrize("placement", ["cuda:x", "gpu:0", "cuda:", "cuda:0,0", "cuda:-1",
                                       "cuda:0,1,2,3,4,5,6,7,8", ""])
def test_bad_placements_are_refused_and_create_nothing(gpus, name, placement):
    with pytest.raises(loraflip.InvalidArgument):
        gpus.create(name, peft_state(), CONFIG, placement=placement)
    with pytest.raises(loraflip.InvalidArgument):
        gpus.publish(name, peft_state(), CONFIG, placement=placement)
    with pytest.raises(loraflip.NotFound):
        gpus.info(name)


def test_placement_must_be_a_string_and_a_served_device(gpus, name):
    for bad in (0, ["cuda:0"], b"cuda:0"):
        with pytest.raises(loraflip.InvalidArgument, match="placement must be a str"):
            gpus.create(name, peft_state(), CONFIG, placement=bad)
    with pytest.raises(loraflip.NotFound, match="device 5"):
        gpus.create(name, peft_state(), CONFIG, placement="cuda:5")
    gpus.publish(name, peft_state(), CONFIG, placement="cuda:0")
    with pytest.raises(loraflip.InvalidArgument, match="placed on 'cuda:0'"):
        gpus.publish(name, peft_state(), CONFIG, placement="cuda:0,1")
    assert gpus.publish(name, peft_state(), CONFIG, placement="cuda:0") == 2
    assert gpus.publish(name, peft_state(), CONFIG, placement="device:0") == 3


def test_module_level_create_passes_the_placement(gpu_daemon, name):
    loraflip.connect(gpu_daemon.dir)
    try:
        loraflip.create(name, peft_state(), CONFIG, placement="cuda:1")
        assert loraflip.info(name)["placement"] == "cuda:1"
        loraflip.publish(name, peft_state(6))
        with loraflip.acquire(name) as snap:
            assert snap.device == 1
    finally:
        loraflip.default_client().close()


def test_a_daemon_without_devices_refuses_device_placement_and_says_why(client, name):
    with pytest.raises(loraflip.Unsupported, match="--devices") as e:
        client.publish(name, peft_state(), CONFIG, placement="cuda:0")
    assert e.value.code == loraflip._lib.LF_E_UNSUPPORTED
    with pytest.raises(loraflip.NotFound):
        client.info(name)
    assert client.publish(name, peft_state(), CONFIG, placement="host") == 1


# ---- torch CUDA tensors ----

class _FakeStream:
    def __init__(self, device):
        self.device, self.cuda_stream, self.synced = device, 0, 0  # 0: the default stream

    def synchronize(self):
        self.synced += 1


class _FakeCuda:
    def __init__(self):
        self.streams, self.entered = {}, []

    def current_stream(self, device):
        return self.streams.setdefault(device, _FakeStream(device))

    def device(self, device):
        import contextlib
        self.entered.append(device)
        return contextlib.nullcontext()


def _fake_torch_tensor_type():
    # What Writer._copy reads of a torch CUDA tensor, over a device address of this process.
    class Device:
        def __init__(self, index):
            self.type, self.index = "cuda", index

    class FakeCudaTensor:
        def __init__(self, t: loraflip.Tensor):
            self.t, self.device, self.shape = t, Device(t.device), t.shape
            self.dtype = {"f32": "torch.float32", "f16": "torch.float16"}[t.dtype]

        def detach(self):
            return self

        def contiguous(self):
            return self

        def data_ptr(self):
            return self.t.data_ptr

        def numel(self):
            return self.t.nbytes // self.element_size()

        def element_size(self):
            return 4 if self.t.dtype == "f32" else 2

        def get_device(self):
            return self.device.index

        def cpu(self):
            raise AssertionError("a device-placed slot takes CUDA tensors without a host copy")

    FakeCudaTensor.__module__ = "torch"
    return FakeCudaTensor


def test_cuda_tensors_go_through_copy_in_async_on_the_current_stream(gpus, name, monkeypatch):
    """The Python side of the torch CUDA path: lf_writer_copy_in_async with the tensor's device
    and its current stream (device to device, or peer), sources kept until the write ends,
    streams waited for before an abort. A stand-in torch module supplies the streams; the
    "CUDA tensors" are another device-placed adapter's views (the host stand-in checks that a
    device source lies in a device block, as CUDA would need it to be device memory)."""
    import sys
    import types
    fake = types.ModuleType("torch")
    fake.cuda = _FakeCuda()
    monkeypatch.setitem(sys.modules, "torch", fake)
    T = _fake_torch_tensor_type()
    state = peft_state(8)
    gpus.publish(name + "-src", state, CONFIG, placement="cuda:0,1")
    gpus.create(name, state, CONFIG, placement="cuda:0,1")
    with gpus.acquire(name + "-src") as src:
        # Half the tensors come from device 0 (a device-to-device copy), half from device 1
        # (a peer copy into device 0).
        tensors = {k: T(src.tensor(k, device=i % 2)) for i, k in enumerate(state)}
        v = gpus.publish(name, tensors)
        assert fake.cuda.entered == [i % 2 for i in range(len(state))]
        # Settled once the commit returned (the daemon had waited for the copies by then).
        assert fake.cuda.streams[0].synced == 1 and fake.cuda.streams[1].synced == 1
        w = gpus.write(name)
        k = next(iter(state))
        w.copy_in(k, tensors[k])
        assert len(w._keep) == 1
        w.abort()
        assert fake.cuda.streams[0].synced == 2 and w._keep == []
    assert gpus.active_version(name) == v
    with gpus.acquire(name, min_version=v) as snap:
        for k, a in state.items():
            for dev in (0, 1):
                assert device_bytes(snap.tensor(k, device=dev)) == a.tobytes()


def test_writes_through_exported_device_views_are_named_to_the_commit(gpus, name, monkeypatch):
    """A writable device tensor handed out (DLPack or __cuda_array_interface__) may be written by
    the caller's own GPU work, which the library cannot see: the commit names the stream that
    work runs on (torch's current stream of the device, else the device's default stream), so
    the daemon flips only after it lands. Nothing is named when no device view left."""
    import sys
    import types
    named = []
    real = loraflip._lib.lf_writer_commit_after

    def recording(handle, device, stream):
        named.append((device, stream))
        return real(handle, device, stream)

    monkeypatch.setattr(loraflip._lib, "lf_writer_commit_after", recording)
    state = peft_state(3)
    gpus.create(name, state, CONFIG, placement="cuda:1")
    keys = list(state)
    with gpus.write(name) as w:
        w.copy_in(keys[0], state[keys[0]])  # a host copy: nothing to name
    assert named == []

    monkeypatch.delitem(sys.modules, "torch", raising=False)
    with gpus.write(name) as w:
        t = w.tensor(keys[0])
        assert t.__cuda_array_interface__["data"][1] is False  # writable
        ctypes.memmove(t.data_ptr, state[keys[0]].ctypes.data, t.nbytes)  # "a kernel"
        for k in keys[1:]:
            w.copy_in(k, state[k])
    assert named == [(1, None)]  # no torch in use: the device's default stream

    fake = types.ModuleType("torch")
    fake.cuda = _FakeCuda()
    monkeypatch.setitem(sys.modules, "torch", fake)
    named.clear()
    with gpus.write(name) as w:
        w.tensor(keys[0]).__dlpack__()  # a DLPack export, consumed by "torch"
        for k in keys:
            w.copy_in(k, state[k])
    assert named == [(1, None)]  # torch's current stream of device 1 (its default: NULL)
    assert 1 in fake.cuda.streams
    with gpus.acquire(name) as snap:
        for k, a in state.items():
            assert device_bytes(snap.tensor(k)) == a.tobytes()


# ---- torch CUDA tensors (real GPUs only) ----

def _torch_cuda():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA device")
    return torch


def test_torch_cuda_tensors_are_copied_device_to_device():
    torch = _torch_cuda()
    d = Daemon("cuda", extra=["--devices", "0", "--device-arena-size", "64M"]).start()
    try:
        c = loraflip.Client(d.dir)
        try:
            state = {k: torch.from_numpy(a).cuda() for k, a in peft_state(7).items()}
            v = c.publish("gpu", state, CONFIG, placement="cuda:0")  # lf_writer_copy_in_async
            with c.acquire("gpu") as snap:
                assert snap.version == v
                for k, want in state.items():
                    got = torch.from_dlpack(snap.tensor(k))
                    assert got.device == want.device and torch.equal(got, want)
                    assert torch.equal(torch.as_tensor(snap.tensor(k), device="cuda"), want)
            bf = {k: t.to(torch.bfloat16) for k, t in state.items()}
            c.publish("gpu16", bf, CONFIG, placement="cuda:0")
            with c.acquire("gpu16") as snap:
                for k, want in bf.items():
                    assert torch.equal(torch.from_dlpack(snap.tensor(k)), want)
        finally:
            c.close()
    finally:
        d.stop()


def test_release_after_a_stream_keeps_the_pin_until_a_later_acquire(gpus, name):
    gpus.publish(name, peft_state(1), CONFIG, placement="cuda:0")
    pinned = lambda: gpus.info(name)["census"]["pinned"]
    snap = gpus.acquire(name).__enter__()
    # The default stream of the stand-in has no queued work, but it runs asynchronously as
    # CUDA's does: the event completes soon, not at once, and the first acquire on this thread
    # after that lets the pin go.
    snap.release_after(None)
    assert snap.released
    with pytest.raises(loraflip.ReleasedError):
        snap.tensor(next(iter(snap)))
    deadline = time.monotonic() + 10
    while True:
        with gpus.acquire(name) as again:
            assert again.version == snap.version
        if pinned() == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert pinned() == 0
    snap.release_after(None)  # released already: nothing to do


def test_release_after_needs_the_device_of_a_host_version(client, name):
    client.publish(name, peft_state(1), CONFIG)
    with client.acquire(name) as snap:
        with pytest.raises(loraflip.InvalidArgument, match="name the device"):
            snap.release_after(None)
        assert not snap.released
        assert snap[next(iter(snap))].shape  # still pinned and readable
