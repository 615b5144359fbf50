#!/usr/bin/env python3
"""Writes the seed corpus of the control-message fuzzer (tests/fuzz/corpus/).

Every file is one input of tests/fuzz/harness.hpp: one or more msgpack control messages
separated by the 4 bytes C1 'L' 'F' C1, handled in order from an empty arena. Files named
ok-* must be answered ok from the first message to the last (the replay test checks it, so the
seeds keep reaching deep states as the protocol grows); err-* exercise error paths; crash-*
and other names are inputs the fuzzer found, kept as regression tests.

Standard library only: msgpack is written by hand below (the subset the protocol uses).
usage: make_corpus.py [OUTPUT_DIR]   (default: the corpus folder beside this script)
"""
import os
import struct
import sys

SEPARATOR = b"\xc1LF\xc1"


def pack(v):
    """msgpack of None, bool, int, float, str, bytes, list/tuple and dict (in insertion order)."""
    if v is None:
        return b"\xc0"
    if v is True:
        return b"\xc3"
    if v is False:
        return b"\xc2"
    if isinstance(v, int):
        if 0 <= v < 0x80:
            return bytes([v])
        if -32 <= v < 0:
            return struct.pack(">b", v)
        if v >= 0:
            for fmt, tag, limit in ((">B", 0xCC, 1 << 8), (">H", 0xCD, 1 << 16),
                                    (">I", 0xCE, 1 << 32), (">Q", 0xCF, 1 << 64)):
                if v < limit:
                    return bytes([tag]) + struct.pack(fmt, v)
            raise ValueError("integer too large")
        for fmt, tag, limit in ((">b", 0xD0, 1 << 7), (">h", 0xD1, 1 << 15),
                                (">i", 0xD2, 1 << 31), (">q", 0xD3, 1 << 63)):
            if v >= -limit:
                return bytes([tag]) + struct.pack(fmt, v)
        raise ValueError("integer too small")
    if isinstance(v, float):
        return b"\xcb" + struct.pack(">d", v)
    if isinstance(v, str):
        b = v.encode("utf-8")
        n = len(b)
        if n < 32:
            return bytes([0xA0 | n]) + b
        if n < 1 << 8:
            return b"\xd9" + struct.pack(">B", n) + b
        if n < 1 << 16:
            return b"\xda" + struct.pack(">H", n) + b
        return b"\xdb" + struct.pack(">I", n) + b
    if isinstance(v, (bytes, bytearray)):
        n = len(v)
        if n < 1 << 8:
            return b"\xc4" + struct.pack(">B", n) + bytes(v)
        if n < 1 << 16:
            return b"\xc5" + struct.pack(">H", n) + bytes(v)
        return b"\xc6" + struct.pack(">I", n) + bytes(v)
    if isinstance(v, (list, tuple)):
        n = len(v)
        head = bytes([0x90 | n]) if n < 16 else (
            b"\xdc" + struct.pack(">H", n) if n < 1 << 16 else b"\xdd" + struct.pack(">I", n))
        return head + b"".join(pack(x) for x in v)
    if isinstance(v, dict):
        n = len(v)
        head = bytes([0x80 | n]) if n < 16 else (
            b"\xde" + struct.pack(">H", n) if n < 1 << 16 else b"\xdf" + struct.pack(">I", n))
        return head + b"".join(pack(k) + pack(x) for k, x in v.items())
    raise TypeError(type(v))


_ids = iter(range(1, 1 << 30))


def req(op, args=None):
    msg = {"op": op, "id": next(_ids)}
    if args is not None:
        msg["args"] = args
    return pack(msg)


M64 = (1 << 64) - 1


def checksum_mix(word, index):
    """kernels::checksum_mix (splitmix64's finalizer over word + (index + 1) * golden)."""
    z = (word + (index + 1) * 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def checksum_of_zeros(nbytes):
    """kernels::checksum of nbytes zero bytes (a slot no writer touched)."""
    total = nbytes
    for i in range((nbytes + 7) // 8):
        total += checksum_mix(0, i)
    return total & M64


PEFT_A = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
PEFT_B = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"
# Two f32 tensors of 4096 bytes each: a slot of 8192 bytes (a multiple of the slot alignment,
# so the checksum below covers exactly the tensors).
TENSORS = [{"name": PEFT_A, "dtype": "f32", "shape": [16, 64]},
           {"name": PEFT_B, "dtype": "f32", "shape": [64, 16]}]
SLOT_BYTES = 8192


def create(name="policy", **extra):
    args = {"name": name, "tensors": TENSORS,
            "lora": {"rank": 16, "alpha": 32.0, "target_modules": ["q_proj", "v_proj"],
                     "use_rslora": False},
            "metadata": '{"step": 0}'}
    args.update(extra)
    return req("create_adapter", args)


def begin(name="policy", lease_ms=30000):
    return req("begin_write", {"name": name, "pid": 1, "start": 0, "lease_ms": lease_ms})


def commit(lease, flags=1, checksum=None):
    args = {"lease": lease, "flags": flags}
    if checksum is not None:
        args["checksum"] = checksum
    return req("commit", args)


def seeds():
    hello = req("hello", {"protocol": 1, "pid": 1, "start": 0})
    s = {}
    s["ok-hello"] = [hello]
    s["ok-list-empty"] = [req("list")]
    s["ok-stats-empty"] = [req("stats", {})]
    s["ok-create"] = [create(slots=4, history=2, placement="host")]
    s["ok-create-codes"] = [req("create_adapter", {
        "name": "ref:v1.0_x-y",
        "tensors": [{"name": "w", "dtype": 1, "shape": [8]},
                    {"name": "h", "dtype": 3, "shape": [2, 2, 2, 2, 2, 2]},
                    {"name": "i", "dtype": "i64", "shape": []}],
        "lora": {"rank": 4, "target_modules": "q_proj,k_proj", "use_rslora": True},
        "history": -1, "slots": 0, "placement": None})]
    s["ok-create-info-list-stats"] = [create(), req("info", {"name": "policy"}), req("list"),
                                      req("stats")]
    s["ok-write-commit"] = [create(), begin(), commit(1), req("info", {"name": "policy"})]
    s["ok-write-commit-checksum"] = [create(), begin(),
                                     commit(1, 3, checksum_of_zeros(SLOT_BYTES))]
    s["ok-write-abort"] = [create(), begin(), req("abort", {"lease": 1}), begin(), commit(2, 0)]
    s["ok-rollback"] = [create(), begin(), commit(1), begin(), commit(2), begin(), commit(3),
                        req("rollback", {"name": "policy", "version": 2}),
                        req("info", {"name": "policy"})]
    s["ok-drop"] = [create(), begin(), commit(1), req("drop_adapter", {"name": "policy"}),
                    req("list"), create()]
    s["ok-two-adapters"] = [create("a"), create("b", slots=3, history=1), begin("a"), begin("b"),
                            commit(2), commit(1), req("list"), req("stats")]
    s["ok-everything"] = [hello, create(), req("list"), begin(), commit(1), begin(), commit(2),
                          req("rollback", {"name": "policy", "version": 1}), begin(),
                          req("abort", {"lease": 3}), req("info", {"name": "policy"}),
                          req("stats"), req("drop_adapter", {"name": "policy"})]

    s["err-hello-protocol"] = [req("hello", {"protocol": 2})]
    s["err-unknown-op"] = [req("frobnicate", {})]
    s["err-missing-args"] = [req("info"), req("begin_write", {"name": "policy"}),
                             req("commit", {}), req("rollback", {"name": "x"})]
    s["err-wrong-types"] = [req("info", {"name": 7}), req("commit", {"lease": "one"}),
                            pack({"op": 1, "id": 2}), pack({"op": "list", "id": -1}),
                            pack({"op": "list", "id": 1, "args": [1, 2]})]
    s["err-not-a-map"] = [pack([1, 2, 3]), pack("hello"), b"", b"\xc1", b"\x81"]
    s["err-truncated"] = [create()[:40]]
    s["err-trailing"] = [req("list") + b"\x00"]
    s["err-deep"] = [pack({"op": "list", "id": 1, "args": {"a": [[[[[[[1]]]]]]]}})]
    s["err-create"] = [
        create(placement="gpu:0"), create(name="bad name"), create(name=""),
        create(name="x" * 200), create(slots=65), create(history=-2),
        req("create_adapter", {"name": "big", "tensors": [
            {"name": "t", "dtype": "f32", "shape": [1 << 20, 1 << 20]}]}),
        req("create_adapter", {"name": "neg", "tensors": [
            {"name": "t", "dtype": "f32", "shape": [-1, 4]}]}),
        req("create_adapter", {"name": "dtype", "tensors": [
            {"name": "t", "dtype": "f128", "shape": [4]}]}),
        req("create_adapter", {"name": "dims", "tensors": [
            {"name": "t", "dtype": "f32", "shape": [1] * 7}]}),
        req("create_adapter", {"name": "dup", "tensors": [TENSORS[0], TENSORS[0]]}),
        req("create_adapter", {"name": "notensors", "tensors": []}),
        create(), create()]
    s["err-arena-full"] = [req("create_adapter", {"name": "huge", "tensors": [
        {"name": "t", "dtype": "u8", "shape": [1 << 19]}], "slots": 4})]
    s["err-lease"] = [create(), commit(99), req("abort", {"lease": 0}), begin(), commit(1, 4),
                      begin(lease_ms=0), begin(name="nosuch")]
    s["err-lease-expired"] = [create(), begin(lease_ms=1), req("stats"), commit(1)]
    s["err-checksum-mismatch"] = [create(), begin(), commit(1, 2, 12345), begin(), commit(2, 2)]
    s["err-no-free-slot"] = [create(slots=2, history=0), begin(), begin(), begin()]
    s["err-rollback"] = [create(), req("rollback", {"name": "policy", "version": 1}), begin(),
                         commit(1), req("rollback", {"name": "policy", "version": 7}),
                         req("rollback", {"name": "nosuch", "version": 1})]
    s["err-drop"] = [req("drop_adapter", {"name": "nosuch"}), create(),
                     req("drop_adapter", {"name": "policy"}),
                     req("drop_adapter", {"name": "policy"}), begin()]
    s["err-device"] = [create(name="gpu", placement="cuda:2"),      # not served
                       create(name="gpu", placement="cuda:0,0"),    # listed twice
                       create(name="gpu", placement="cuda:"),
                       create(name="gpu", placement="cuda:-1"),
                       create(name="gpu", placement="cuda:0,1,2,3,4,5,6,7,8"),
                       create(name="gpu", placement="device:x"),
                       create(), begin(),
                       req("commit", {"lease": 1, "flags": 0, "event": b"\x01" * 63}),
                       req("commit", {"lease": 1, "flags": 0, "event": b"\x00" * 64})]

    # Device placements, served by the harness's two host stand-in devices (1 MiB each).
    s["ok-device-write-commit"] = [create("gpu", placement="cuda:0"), begin("gpu"),
                                   commit(1, 3, checksum_of_zeros(SLOT_BYTES)),
                                   req("info", {"name": "gpu"}), req("list")]
    s["ok-device-replicas"] = [create("tp", placement="cuda:0,1"), begin("tp"), commit(1),
                               begin("tp"), commit(2, 3, checksum_of_zeros(SLOT_BYTES)),
                               req("rollback", {"name": "tp", "version": 1}),
                               req("info", {"name": "tp"}), req("stats")]
    s["ok-device-second-first"] = [create("tp", placement="device:1,0", slots=3, history=1),
                                   begin("tp"), commit(1, 1), begin("tp"), commit(2),
                                   begin("tp"), commit(3), req("info", {"name": "tp"})]
    s["ok-device-abort-drop"] = [create("tp", placement="cuda:0,1"), begin("tp"), commit(1),
                                 begin("tp"), req("abort", {"lease": 2}), begin("tp"),
                                 req("drop_adapter", {"name": "tp"}), req("list"),
                                 create("tp", placement="cuda:1,0"), begin("tp"), commit(4),
                                 req("info", {"name": "tp"})]
    s["ok-device-and-host"] = [create("a"), create("b", placement="cuda:0"),
                               create("c", placement="cuda:1"),
                               create("d", placement="cuda:0,1", slots=2, history=0),
                               begin("a"), begin("b"), begin("c"), begin("d"),
                               commit(2, 3), commit(4), commit(3, 1), commit(1), req("list"),
                               req("stats"),
                               # No lease left: the reclamation pass after the last request
                               # gives their device ranges back.
                               req("drop_adapter", {"name": "d"}),
                               req("drop_adapter", {"name": "b"})]
    # A commit naming an event: a host event handle (magic "LFEV") of a segment that does not
    # exist, then one of no implementation at all; each ends its lease.
    missing_event = (struct.pack("<IIQQ", 0x4C464556, 0, 0, 0x1234) +
                     b"loraflip.fuzz-no-such-event".ljust(40, b"\x00"))
    s["err-device-event"] = [create("gpu", placement="cuda:0"), begin("gpu"),
                             req("commit", {"lease": 1, "flags": 1, "event": missing_event}),
                             begin("gpu"),
                             req("commit", {"lease": 2, "flags": 0, "event": b"\x07" * 64}),
                             begin("gpu"), commit(3)]
    # Device arenas that run out: one adapter larger than a device, then device 1 filled so
    # that a replicated adapter gets its range on device 0 and must give it back.
    half = {"name": "t", "dtype": "u8", "shape": [1 << 19]}
    s["err-device-arena-full"] = [
        req("create_adapter", {"name": "huge", "tensors": [half], "slots": 4,
                               "placement": "cuda:0"}),
        req("create_adapter", {"name": "fill", "tensors": [half], "slots": 2, "history": 0,
                               "placement": "cuda:1"}),
        req("create_adapter", {"name": "tp", "tensors": [half], "slots": 2, "history": 0,
                               "placement": "cuda:0,1"}),
        req("create_adapter", {"name": "tp", "tensors": [half], "slots": 2, "history": 0,
                               "placement": "cuda:0"}),
        begin("tp"), commit(1, 3)]
    return s


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(
        os.path.abspath(__file__)), "corpus")
    os.makedirs(out, exist_ok=True)
    for name, messages in seeds().items():
        with open(os.path.join(out, name + ".msgpack"), "wb") as f:
            f.write(SEPARATOR.join(messages))
    print(f"wrote {len(seeds())} seeds to {out}")


if __name__ == "__main__":
    main()
