"""loraflip.lora (the Python bindings of libloraflip_lora) against a float64 numpy reference:
per-row and per-segment selection, mixed ranks, rows without adapter, fp32 / fp16 / bf16 (as
uint16 bit patterns), bad arguments, and adapters read in place from a version pinned from a
real loraflipd.

The library: $LORAFLIP_LORA_LIBRARY if set, else found next to libloraflip / in the checkout's
build folder (see loraflip/lora.py)."""
from __future__ import annotations

import numpy as np
import pytest

import loraflip
from loraflip import lora

H_IN, H_OUT = 64, 48


# ---- bf16 bit patterns and the reference ----
def to_bf16_bits(a: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bits, round to nearest even (the inputs here are finite)."""
    u = np.ascontiguousarray(a, np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def from_bf16_bits(b: np.ndarray) -> np.ndarray:
    return (b.astype(np.uint32) << 16).view(np.float32)


DTYPES = {
    # name: (make storage from float32, storage -> float64, unit roundoff of the output, dtype=)
    "f32": (lambda a: a.astype(np.float32), lambda s: s.astype(np.float64), 2.0**-24, None),
    "f16": (lambda a: a.astype(np.float16), lambda s: s.astype(np.float64), 2.0**-11, None),
    "bf16": (to_bf16_bits, lambda s: from_bf16_bits(s).astype(np.float64), 2.0**-8, "bf16"),
}


def make(rng, dtype, shape, mag=1.0):
    store, back, _, _ = DTYPES[dtype]
    s = store((rng.standard_normal(shape) * mag).astype(np.float32))
    return s, back(s)


def make_adapters(rng, dtype, ranks, h_in=H_IN, h_out=H_OUT):
    """[(A, B, scale)] in storage dtype, and the same in float64."""
    stored, ref = [], []
    for i, r in enumerate(ranks):
        A, A64 = make(rng, dtype, (r, h_in), 1 / np.sqrt(h_in))
        B, B64 = make(rng, dtype, (h_out, r), 1 / np.sqrt(r))
        s = lora.scale(2 * r, r) if i % 2 == 0 else 0.5 + i / 8
        stored.append((A, B, s))
        ref.append((A64, B64, s))
    return stored, ref


def reference(x64, y64, ref_adapters, row_adapter):
    """y + scale * B (A x) per row in float64, and the bound on |result| used for tolerances:
    |y| + |scale| |B| (|A| |x|)."""
    out, mag = y64.copy(), np.abs(y64)
    for i, a in enumerate(row_adapter):
        if a < 0:
            continue
        A, B, s = ref_adapters[a]
        out[i] += s * (B @ (A @ x64[i]))
        mag[i] = mag[i] + abs(s) * (np.abs(B) @ (np.abs(A) @ np.abs(x64[i])))
    return out, mag


def check_close(dtype, y_out, out64, mag, h_in, max_rank):
    _, back, u, _ = DTYPES[dtype]
    got = back(y_out)
    # one rounding of the output plus fp32 accumulation over h_in + rank terms, times 2
    tol = 2 * (u + (h_in + max_rank + 2) * 2.0**-24) * mag + 1e-30
    err = np.abs(got - out64)
    assert np.all(err <= tol), f"max error {err.max()} (worst ratio {(err / tol).max():.3f})"


def rows_of_segments(offsets, seg_adapter, n_rows):
    row = np.full(n_rows, -1, np.int64)
    for s, a in enumerate(seg_adapter):
        row[offsets[s]:offsets[s + 1]] = a
    return row


# ---- correctness ----
@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
def test_rows_mixed_ranks_match_float64_reference(dtype):
    rng = np.random.default_rng(1)
    ranks = [1, 8, 12, 64, 128]
    adapters, ref = make_adapters(rng, dtype, ranks)
    n = 41
    x, x64 = make(rng, dtype, (n, H_IN))
    y, y64 = make(rng, dtype, (n, H_OUT))
    idx = rng.integers(-1, len(ranks), n)
    idx[:len(ranks) + 1] = np.arange(-1, len(ranks))  # every adapter and "none" at least once
    y_before = y.copy()
    out = lora.apply(x, y, adapters, indices=idx, dtype=DTYPES[dtype][3])
    assert out is y
    out64, mag = reference(x64, y64, ref, idx)
    check_close(dtype, y, out64, mag, H_IN, max(ranks))
    assert np.array_equal(y[idx < 0], y_before[idx < 0])  # rows without adapter keep their bits

    # shrink + expand give the same bits as the fused call
    y2 = y_before.copy()
    v = lora.shrink(x, adapters, indices=idx, dtype=DTYPES[dtype][3])
    assert v.dtype == np.float32 and v.shape == (n, max(ranks))
    lora.expand(v, y2, adapters, indices=idx, dtype=DTYPES[dtype][3])
    assert np.array_equal(y2, y)


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
def test_segments_with_empty_ones(dtype):
    rng = np.random.default_rng(2)
    ranks = [4, 16, 7]
    adapters, ref = make_adapters(rng, dtype, ranks)
    offsets = [0, 0, 5, 5, 6, 19, 19, 30, 30]  # empty first, middle and last segments
    seg_adapter = [1, 0, 2, -1, 1, 2, 0, 1]
    n = offsets[-1]
    x, x64 = make(rng, dtype, (n, H_IN))
    y, y64 = make(rng, dtype, (n, H_OUT))
    y_before = y.copy()
    lora.apply(x, y, adapters, indices=seg_adapter, segments=offsets, dtype=DTYPES[dtype][3])
    row = rows_of_segments(offsets, seg_adapter, n)
    out64, mag = reference(x64, y64, ref, row)
    check_close(dtype, y, out64, mag, H_IN, max(ranks))
    assert np.array_equal(y[row < 0], y_before[row < 0])
    # the same rows through per-row indices: the same bits
    y3 = y_before.copy()
    lora.apply(x, y3, adapters, indices=row, dtype=DTYPES[dtype][3])
    assert np.array_equal(y3, y)


def test_one_adapter_strided_and_batched_inputs():
    """indices=None with one adapter: every row; x with a row stride larger than h_in, and
    [batch, seq, hidden] arrays whose leading axes are rows."""
    rng = np.random.default_rng(3)
    adapters, ref = make_adapters(rng, "f32", [16])
    wide = rng.standard_normal((6, H_IN + 16)).astype(np.float32)
    x = wide[:, 8:8 + H_IN]                  # row stride H_IN + 16, not contiguous
    y = rng.standard_normal((2, 3, H_OUT)).astype(np.float32)
    y64 = y.reshape(6, H_OUT).astype(np.float64)
    lora.apply(x, y, adapters)
    out64, mag = reference(x.astype(np.float64), y64, ref, [0] * 6)
    check_close("f32", y.reshape(6, H_OUT), out64, mag, H_IN, 16)


def test_scales_keyword_and_scale_helper():
    rng = np.random.default_rng(4)
    adapters, _ = make_adapters(rng, "f32", [8, 8])
    x = rng.standard_normal((4, H_IN)).astype(np.float32)
    y1 = np.zeros((4, H_OUT), np.float32)
    y2 = np.zeros((4, H_OUT), np.float32)
    lora.apply(x, y1, [(A, B, s) for A, B, s in adapters], indices=[0, 1, 1, -1])
    lora.apply(x, y2, [(A, B) for A, B, _ in adapters], indices=[0, 1, 1, -1],
               scales=[s for _, _, s in adapters])
    assert np.array_equal(y1, y2)
    assert lora.scale(16, 8) == 2.0
    assert lora.scale(16, 4, rslora=True) == 8.0
    with pytest.raises(loraflip.InvalidArgument):
        lora.scale(16, 0)


def test_thread_count_does_not_change_bits():
    rng = np.random.default_rng(5)
    adapters, _ = make_adapters(rng, "bf16", [16, 32, 8], h_in=256, h_out=256)
    x, _ = make(rng, "bf16", (300, 256))
    y0, _ = make(rng, "bf16", (300, 256))
    idx = rng.integers(-1, 3, 300)
    outs = []
    try:
        for n in (1, 0, 3):
            lora.set_threads(n)
            y = y0.copy()
            lora.apply(x, y, adapters, indices=idx, dtype="bf16")
            outs.append(y)
    finally:
        lora.set_threads(0)
    assert np.array_equal(outs[0], outs[1]) and np.array_equal(outs[0], outs[2])
    with pytest.raises(loraflip.InvalidArgument):
        lora.set_threads(-1)


def test_empty_batch_and_no_adapters():
    x = np.zeros((0, H_IN), np.float32)
    y = np.zeros((0, H_OUT), np.float32)
    rng = np.random.default_rng(6)
    adapters, _ = make_adapters(rng, "f32", [4])
    lora.apply(x, y, adapters)
    x = rng.standard_normal((3, H_IN)).astype(np.float32)
    y = rng.standard_normal((3, H_OUT)).astype(np.float32)
    before = y.copy()
    lora.apply(x, y, adapters, indices=[-1, -1, -1])
    assert np.array_equal(y, before)


# ---- bad arguments: a LoraflipError subclass with the status and a message; y unchanged ----
def test_bad_arguments_raise_and_write_nothing():
    rng = np.random.default_rng(7)
    adapters, _ = make_adapters(rng, "f32", [4, 8])
    A0, B0, s0 = adapters[0]
    x = rng.standard_normal((5, H_IN)).astype(np.float32)
    y = rng.standard_normal((5, H_OUT)).astype(np.float32)
    before = y.copy()

    def refused(exc, match, *args, **kw):
        with pytest.raises(exc, match=match) as e:
            lora.apply(*args, **kw)
        assert isinstance(e.value, loraflip.LoraflipError) or exc is TypeError
        assert np.array_equal(y, before)
        return e.value

    # rank mismatch between A and B
    bad_b = rng.standard_normal((H_OUT, 5)).astype(np.float32)
    e = refused(loraflip.InvalidArgument, "rank mismatch", x, y, [(A0, bad_b, 1.0)])
    assert e.code == lora.LF_E_INVALID_ARGUMENT
    # hidden size not a multiple of 8: the library refuses, Python says why
    x12 = x[:, :12].copy()
    e = refused(loraflip.InvalidArgument, "h_in = 12 is not a positive multiple of 8",
                x12, y, [(A0[:, :12].copy(), B0, s0)])
    assert e.code == lora.LF_E_INVALID_ARGUMENT and "invalid argument" in str(e)
    # a row stride that is not a multiple of 8
    wide = np.zeros((5, H_IN + 4), np.float32)
    refused(loraflip.InvalidArgument, "row stride of x", wide[:, :H_IN], y, [adapters[0]])
    # adapter index out of range (per row and per segment)
    refused(loraflip.InvalidArgument, r"indices \[2\] are outside \[-1, 2\)", x, y, adapters,
            indices=[0, 1, 2, -1, 0])
    refused(loraflip.InvalidArgument, r"indices \[-3\]", x, y, adapters,
            indices=[0, 1, -3, -1, 0])
    refused(loraflip.InvalidArgument, "outside", x, y, adapters, indices=[0, 5],
            segments=[0, 2, 5])
    # broken segment offsets
    refused(loraflip.InvalidArgument, "segment offsets", x, y, adapters, indices=[0, 1],
            segments=[0, 3, 2])
    refused(loraflip.InvalidArgument, "segment offsets", x, y, adapters, indices=[0, 1],
            segments=[0, 2, 4])
    # wrong counts, shapes, dtypes
    refused(loraflip.InvalidArgument, "expected 5 entries", x, y, adapters, indices=[0, 1])
    refused(loraflip.InvalidArgument, "no indices", x, y, adapters)
    refused(loraflip.InvalidArgument, "rows", x[:4], y, [adapters[0]])
    refused(loraflip.InvalidArgument, "input hidden size", x, y,
            [(rng.standard_normal((4, 32)).astype(np.float32), B0, 1.0)])
    refused(loraflip.InvalidArgument, "f16 but the call works on f32", x, y,
            [(A0.astype(np.float16), B0.astype(np.float16), 1.0)])
    refused(loraflip.InvalidArgument, "dtype=.bf16.", x.astype(np.uint16), y.astype(np.uint16),
            [(A0, B0, 1.0)])
    refused(loraflip.InvalidArgument, "no scale", x, y, [(A0, B0)])
    refused(loraflip.InvalidArgument, "C-contiguous", x, y, [(np.asfortranarray(A0), B0, 1.0)])
    refused(TypeError, "numpy array", x.tolist(), y, [adapters[0]])
    # rank above LF_LORA_MAX_RANK
    big = [(rng.standard_normal((129, H_IN)).astype(np.float32),
            rng.standard_normal((H_OUT, 129)).astype(np.float32), 1.0)]
    refused(loraflip.InvalidArgument, "max_rank = 129|rank 129", x, y, big)
    # y must be writable
    ro = y.copy()
    ro.flags.writeable = False
    with pytest.raises(loraflip.InvalidArgument, match="read-only"):
        lora.apply(x, ro, [adapters[0]])
    # shrink / expand: v of the wrong shape or dtype
    with pytest.raises(loraflip.InvalidArgument, match="v:"):
        lora.expand(np.zeros((4, 8), np.float32), y, adapters, indices=[0] * 5)
    with pytest.raises(loraflip.InvalidArgument, match="float32"):
        lora.shrink(x, adapters, indices=[0] * 5, v=np.zeros((5, 8), np.float64))
    assert np.array_equal(y, before)


def test_cuda_entry_points_answer_unsupported_or_refuse_null():
    """The raw bindings: without CUDA built the launchers answer LF_E_UNSUPPORTED; with it,
    a size query works without a device pointer."""
    idx = np.zeros(4, np.int32)  # not read by a size query, but must not be NULL
    b = lora.lf_lora_batch_t(dtype=lora.LF_DTYPE_F32, n_rows=4, h_in=8, h_out=8,
                             max_rank=4, select=lora.LF_LORA_SELECT_ROWS,
                             row_adapter=idx.ctypes.data)
    n = lora.ctypes.c_size_t(0)
    rc = lora.lf_lora_cuda_apply(lora.ctypes.byref(b), None, None, None, lora.ctypes.byref(n),
                                 None, None)
    assert rc in (lora.LF_OK, lora.LF_E_UNSUPPORTED)
    assert rc == lora.LF_E_UNSUPPORTED or n.value > 0
    assert lora.strerror(lora.LF_E_UNSUPPORTED) == "unsupported"
    assert lora.strerror(12345) == "unknown error"


# ---- adapters read in place from a real daemon ----
def peft_state(ranks, hidden=H_IN, seed=0):
    rng = np.random.default_rng(seed)
    return {f"layers.0.q_proj.{i}": (rng.standard_normal((r, hidden)).astype(np.float32) / 8,
                                     rng.standard_normal((hidden, r)).astype(np.float32) / 8)
            for i, r in enumerate(ranks)}


def test_apply_over_pinned_views_without_copying(client, name):
    rng = np.random.default_rng(8)
    ranks = {name + "-a": 4, name + "-b": 16}
    src = {}
    for adapter, r in ranks.items():
        A = (rng.standard_normal((r, H_IN)) / 8).astype(np.float32)
        B = (rng.standard_normal((H_IN, r)) / 8).astype(np.float32)
        p = "base_model.model.model.layers.0.self_attn.q_proj"
        sd = {f"{p}.lora_A.weight": A, f"{p}.lora_B.weight": B}
        client.publish(adapter, sd, config={"r": r, "lora_alpha": 2 * r,
                                            "target_modules": ["q_proj"]})
        src[adapter] = sd
    keys = list(next(iter(src.values())))
    x = rng.standard_normal((9, H_IN)).astype(np.float32)
    y0 = rng.standard_normal((9, H_IN)).astype(np.float32)
    idx = np.array([0, 1, -1, 1, 0, 0, -1, 1, 1])
    names = list(ranks)
    with client.acquire(names[0]) as va, client.acquire(names[1]) as vb:
        views = [(v[keys[0]], v[keys[1]], lora.scale(2 * ranks[n], ranks[n]))
                 for v, n in ((va, names[0]), (vb, names[1]))]
        for A, B, _ in views:
            assert isinstance(A, loraflip.PinnedArray) and not A.flags.writeable
        # the table handed to the library points at the pinned slot memory itself
        b, _, _ = lora._build(views, None, idx, None, 9, H_IN, H_IN, [], None, None)
        for entry, (A, B, _) in zip(b.table, views):
            assert entry.a == A.__array_interface__["data"][0]
            assert entry.b == B.__array_interface__["data"][0]
        y = y0.copy()
        lora.apply(x, y, views, indices=idx)
        # loraflip.Tensor objects (version.tensor(name)) work too, and give the same bits
        y_t = y0.copy()
        tensors = [(v.tensor(keys[0]), v.tensor(keys[1]), s)
                   for v, (_, _, s) in zip((va, vb), views)]
        lora.apply(x, y_t, tensors, indices=idx)
        assert np.array_equal(y, y_t)
    # the same computation on private copies: identical bits
    copies = [(src[n][keys[0]], src[n][keys[1]], s) for n, (_, _, s) in zip(names, views)]
    y_copy = y0.copy()
    lora.apply(x, y_copy, copies, indices=idx)
    assert np.array_equal(y, y_copy)
    ref = [(A.astype(np.float64), B.astype(np.float64), s) for A, B, s in copies]
    out64, mag = reference(x.astype(np.float64), y0.astype(np.float64), ref, idx)
    check_close("f32", y, out64, mag, H_IN, 16)
    # after the block the views are released: using them raises instead of reading
    with pytest.raises(loraflip.ReleasedError):
        lora.apply(x, y0.copy(), views, indices=idx)
    with pytest.raises(loraflip.ReleasedError):
        lora.apply(x, y0.copy(), tensors, indices=idx)


def test_bf16_adapter_from_the_daemon_as_bits_and_tensor(client, name):
    rng = np.random.default_rng(9)
    r = 8
    p = "base_model.model.model.layers.0.self_attn.v_proj"
    vals = {f"{p}.lora_A.weight": np.round(rng.standard_normal((r, H_IN)) * 16) / 64,
            f"{p}.lora_B.weight": np.round(rng.standard_normal((H_IN, r)) * 16) / 64}
    vals = {k: v.astype(np.float32) for k, v in vals.items()}  # exact in bf16
    client.create(name, {k: ("bf16", a.shape) for k, a in vals.items()},
                  {"r": r, "lora_alpha": 16, "target_modules": ["v_proj"]})
    client.publish(name, vals, cast=True)
    ka, kb = list(vals)
    x = to_bf16_bits(rng.standard_normal((6, H_IN)).astype(np.float32))
    y0 = to_bf16_bits(rng.standard_normal((6, H_IN)).astype(np.float32))
    idx = [0, -1, 0, 0, -1, 0]
    with client.acquire(name) as v:
        y_bits = y0.copy()
        lora.apply(x, y_bits, [(v.bits(ka), v.bits(kb), 2.0)], indices=idx, dtype="bf16")
        y_tensor = y0.copy()
        lora.apply(x, y_tensor, [(v.tensor(ka), v.tensor(kb), 2.0)], indices=idx, dtype="bf16")
    assert np.array_equal(y_bits, y_tensor)
    ref = [(vals[ka].astype(np.float64), vals[kb].astype(np.float64), 2.0)]
    out64, mag = reference(from_bf16_bits(x).astype(np.float64),
                           from_bf16_bits(y0).astype(np.float64), ref, idx)
    check_close("bf16", y_bits, out64, mag, H_IN, r)


# ---- one dtype numbering and one status vocabulary with loraflip.h ----
def test_lora_statuses_read_as_loraflip_statuses():
    """The LoRA API returns loraflip.h's LF_E_* codes, and lf_lora_strerror (for programs that
    link only libloraflip_lora) says what lf_strerror says about each."""
    from loraflip import _lib
    assert (lora.LF_OK, lora.LF_E_INVALID_ARGUMENT, lora.LF_E_INTERNAL, lora.LF_E_UNSUPPORTED) \
        == (_lib.LF_OK, _lib.LF_E_INVALID_ARGUMENT, _lib.LF_E_INTERNAL, _lib.LF_E_UNSUPPORTED)
    for code in (lora.LF_OK, lora.LF_E_INVALID_ARGUMENT, lora.LF_E_INTERNAL,
                 lora.LF_E_UNSUPPORTED, 12345, -999):
        assert lora.strerror(code) == _lib.lf_strerror(code).decode()


@pytest.mark.parametrize("dtype", ["f16", "bf16"])
def test_a_pinned_views_dtype_code_goes_straight_to_the_lora_api(client, name, dtype):
    """lf_tensor_view.dtype, untranslated, is the dtype of lf_lora_adapter_t and lf_lora_batch_t.
    Under the LoRA header's old numbering of its own (f32 0, f16 1, bf16 2) an f16 view (2) was
    read as bf16 (silently wrong numbers) and a bf16 view (3) was refused."""
    rng = np.random.default_rng(11)
    r = 8
    p = "base_model.model.model.layers.0.self_attn.o_proj"
    # multiples of 1/64 below 1: exact in f16 and in bf16, so the pinned bits are these values
    vals = {f"{p}.lora_A.weight": np.round(rng.standard_normal((r, H_IN)) * 16) / 64,
            f"{p}.lora_B.weight": np.round(rng.standard_normal((H_OUT, r)) * 16) / 64}
    vals = {k: np.clip(v, -0.96875, 0.96875).astype(np.float32) for k, v in vals.items()}
    client.create(name, {k: (dtype, a.shape) for k, a in vals.items()},
                  {"r": r, "lora_alpha": 2 * r, "target_modules": ["o_proj"]})
    client.publish(name, vals, cast=True)
    ka, kb = list(vals)
    x, x64 = make(rng, dtype, (6, H_IN))
    y0, y064 = make(rng, dtype, (6, H_OUT))
    idx = np.array([0, -1, 0, 0, -1, 0], np.int32)
    s = lora.scale(2 * r, r)
    with client.acquire(name) as v:
        va, vb = v._view(ka), v._view(kb)  # the raw lf_tensor_view of each pinned tensor
        want = {"f16": lora.LF_DTYPE_F16, "bf16": lora.LF_DTYPE_BF16}[dtype]
        assert va.dtype == vb.dtype == want == loraflip.dtype_code(dtype)
        table = (lora.lf_lora_adapter_t * 1)(
            lora.lf_lora_adapter_t(a=va.data, b=vb.data, rank=r, dtype=va.dtype, scale=s))
        batch = lora.lf_lora_batch_t(dtype=va.dtype, n_rows=6, h_in=H_IN, h_out=H_OUT,
                                     max_rank=r, select=lora.LF_LORA_SELECT_ROWS,
                                     adapters=lora.ctypes.addressof(table), n_adapters=1,
                                     row_adapter=idx.ctypes.data)
        y = y0.copy()
        rc = lora.lf_lora_apply(lora.ctypes.byref(batch), x.ctypes.data, y.ctypes.data)
        assert rc == lora.LF_OK, lora.strerror(rc)
        # the array API takes the same code as dtype=
        y_api = y0.copy()
        lora.apply(x, y_api, [(v.tensor(ka), v.tensor(kb), s)], indices=idx, dtype=va.dtype)
    assert np.array_equal(y, y_api)
    ref = [(vals[ka].astype(np.float64), vals[kb].astype(np.float64), s)]
    out64, mag = reference(x64, y064, ref, idx)
    check_close(dtype, y, out64, mag, H_IN, r)


def test_lora_api_refuses_loraflip_dtypes_it_does_not_compute_in():
    x = np.zeros((2, 8), np.float64)
    A = np.zeros((4, 8), np.float64)
    B = np.zeros((8, 4), np.float64)
    table = (lora.lf_lora_adapter_t * 1)(
        lora.lf_lora_adapter_t(a=A.ctypes.data, b=B.ctypes.data, rank=4,
                               dtype=loraflip.dtype_code("f64"), scale=1.0))
    idx = np.zeros(2, np.int32)
    batch = lora.lf_lora_batch_t(dtype=loraflip.dtype_code("f64"), n_rows=2, h_in=8, h_out=8,
                                 max_rank=4, select=lora.LF_LORA_SELECT_ROWS,
                                 adapters=lora.ctypes.addressof(table), n_adapters=1,
                                 row_adapter=idx.ctypes.data)
    y = np.ones((2, 8), np.float64)
    rc = lora.lf_lora_apply(lora.ctypes.byref(batch), x.ctypes.data, y.ctypes.data)
    assert rc == lora.LF_E_INVALID_ARGUMENT
    assert np.all(y == 1.0)
    with pytest.raises(loraflip.InvalidArgument, match="f64"):
        lora.apply(x.astype(np.float32), y.astype(np.float32),
                   [(A.astype(np.float32), B.astype(np.float32), 1.0)],
                   indices=[0, 0], dtype=loraflip.dtype_code("f64"))
