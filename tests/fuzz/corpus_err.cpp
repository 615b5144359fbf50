// The err-* seeds of the fuzz corpus: inputs of which at least one request must get an error,
// malformed or refused, each beside requests that are fine (see make_corpus.cpp).
#include <cstdint>
#include <string>
#include <utility>

#include "corpus_builders.hpp"

namespace loraflip::fuzz::corpus {

void err_seeds(Seeds &s) {
  auto add = [&](std::string name) -> Input & {
    return s.emplace_back(std::move(name), Input{}).second;
  };

  add("err-hello-protocol").send(hello(1)).send(hello(ipc::kProtocolVersion + 1)).send(hello(0));
  add("err-unknown-op").raw(request_as("frobnicate", 1, msg::Empty{}));
  {
    Input &in = add("err-missing-args");
    in.raw(encoded(
        [&](Encoder &e) { e.map(2).key("op").str("info").key("id").u64(in.next_id()); }));
    in.raw(request_as("begin_write", in.next_id(), msg::Empty{}));
    in.raw(request_by_hand("begin_write", in.next_id(),
                           [](Encoder &e) { e.map(1).key("lease_ms").u64(5); }));
    in.raw(request_as("commit", in.next_id(), msg::Empty{}));
    in.raw(request_by_hand("rollback", in.next_id(),
                           [](Encoder &e) { e.map(1).key("name").str("x"); }));
    in.raw(request_by_hand("create_adapter", in.next_id(),
                           [](Encoder &e) { e.map(1).key("name").str("x"); }));
    in.raw(encoded([&](Encoder &e) { e.map(2).key("id").u64(in.next_id()).key("args").map(0); }));
  }
  {
    Input &in = add("err-wrong-types");
    in.raw(request_by_hand("info", in.next_id(), [](Encoder &e) { e.map(1).key("name").u64(7); }));
    in.raw(request_by_hand("commit", in.next_id(),
                           [](Encoder &e) { e.map(1).key("lease").str("one"); }));
    in.raw(request_by_hand("begin_write", in.next_id(), [](Encoder &e) {
      e.map(2).key("name").str("policy").key("lease_ms").i64(-5);
    }));
    in.raw(request_by_hand("commit", in.next_id(), [](Encoder &e) {
      e.map(2).key("lease").u64(1).key("event").str("not binary");
    }));
    in.raw(request_by_hand("begin_write", in.next_id(), [](Encoder &e) {
      e.map(2).key("name").str("policy").key("token").str("seven");
    }));
    in.raw(request_by_hand("create_adapter", in.next_id(), [](Encoder &e) {
      e.map(2).key("name").str("x").key("tensors").map(0);
    }));
    in.raw(encoded([&](Encoder &e) { e.map(2).key("op").u64(1).key("id").u64(in.next_id()); }));
    in.raw(encoded([](Encoder &e) { e.map(2).key("op").str("list").key("id").i64(-1); }));
    in.raw(encoded([&](Encoder &e) {
      e.map(3).key("op").str("list").key("id").u64(in.next_id()).key("args").array(2).u64(1).u64(2);
    }));
    in.raw(encoded([&](Encoder &e) { e.map(2).u64(1).str("list").key("id").u64(in.next_id()); }));
  }
  add("err-not-a-map")
      .raw(encoded([](Encoder &e) { e.array(3).u64(1).u64(2).u64(3); }))
      .raw(encoded([](Encoder &e) { e.str("hello"); }))
      .raw("")
      .raw("\xc1")
      .raw("\x81");
  add("err-truncated").raw(msg::encode_request(1, create()).substr(0, 40));
  add("err-trailing").raw(msg::encode_request(1, msg::List{}) + std::string(1, '\0'));
  add("err-deep").raw(request_by_hand("list", 1, [](Encoder &e) {
    e.map(1).key("a");
    for (int i = 0; i < 7; ++i) e.array(1);
    e.u64(1);
  }));
  {
    // Requests whose id comes before the part that breaks a decoding limit (ipc/protocol.hpp):
    // the error reply must still carry that id. (A string, binary or array over its limit needs
    // more than 64 KiB, over the fuzzer's -max_len.)
    Input &in = add("err-limit-after-id");
    in.raw(encoded([&](Encoder &e) {  // nested deeper than kMaxDepth
      e.map(3).key("id").u64(in.next_id()).key("op").str("list").key("args").map(1).key("a");
      for (size_t i = 0; i < ipc::kMaxDepth; ++i) e.array(1);
      e.u64(1);
    }));
    in.raw(encoded([&](Encoder &e) {  // args with more than kMaxMap entries
      e.map(3).key("id").u64(in.next_id()).key("op").str("list").key("args");
      e.map(static_cast<uint32_t>(ipc::kMaxMap + 1));
      for (size_t i = 0; i <= ipc::kMaxMap; ++i) e.u64(i).nil();
    }));
    in.raw(encoded([&](Encoder &e) {  // an envelope with more than kMaxMap entries
      e.map(static_cast<uint32_t>(ipc::kMaxMap + 1)).key("id").u64(in.next_id());
      for (size_t i = 1; i <= ipc::kMaxMap; ++i) e.u64(i).nil();
    }));
    in.raw(encoded([&](Encoder &e) {  // an extension type: the decoder allows none (limit 0)
      e.map(3).key("id").u64(in.next_id()).key("op").str("list").key("args").map(1).key("x");
      e.pk().pack_ext(1, 7);
      e.pk().pack_ext_body("\x01", 1);
    }));
    in.raw(encoded([&](Encoder &e) {  // a huge id, then an array too deep
      e.map(2).key("id").u64(UINT64_MAX).key("op");
      for (size_t i = 0; i <= ipc::kMaxDepth; ++i) e.array(1);
      e.str("list");
    }));
  }
  {
    Input &in = add("err-create");
    in.send(create("policy", {.placement = "gpu:0"}))
        .send(create("bad name"))
        .send(create(""))
        .send(create(std::string(200, 'x')))
        .send(create("policy", {.slots = 65}))
        .send(create("policy", {.history = -2}))
        .send(bare("big", {tensor("t", LF_DTYPE_F32, {1 << 20, 1 << 20})}))
        .send(bare("neg", {tensor("t", LF_DTYPE_F32, {-1, 4})}))
        .send(bare("dims", {tensor("t", LF_DTYPE_F32, {1, 1, 1, 1, 1, 1, 1})}))
        .send(bare("dup", {peft_tensors()[0], peft_tensors()[0]}))
        .send(bare("notensors", {}))
        .send(create())
        .send(create());
    // A dtype no one knows, by name and by number: only by hand (DType writes known names).
    in.raw(request_by_hand("create_adapter", in.next_id(), [](Encoder &e) {
      e.map(2).key("name").str("dtype").key("tensors").array(1);
      write_tensor(e, "t", "f128", {4});
    }));
    in.raw(request_by_hand("create_adapter", in.next_id(), [](Encoder &e) {
      e.map(2).key("name").str("dtype").key("tensors").array(1);
      e.map(3).key("name").str("t").key("dtype").i64(99).key("shape").array(1).i64(4);
    }));
  }
  add("err-arena-full").send(bare("huge", {tensor("t", LF_DTYPE_U8, {1 << 19})}, {.slots = 4}));
  add("err-lease")
      .send(create())
      .send(commit(99))
      .send(abort_lease(0))
      .send(begin())
      .send(commit(1, 4))  // an unknown flag
      .send(begin("policy", 0))
      .send(begin("nosuch"));
  add("err-lease-expired")
      .send(create())
      .send(begin("policy", 1)).send(msg::Stats{}).send(commit(1));
  add("err-checksum-mismatch")
      .send(create())
      .send(begin()).send(commit(1, LF_COMMIT_CHECKSUM, 12345))
      .send(begin()).send(commit(2, LF_COMMIT_CHECKSUM));
  // Numbers a commit may not take: 0, one not above the newest, one past 40 bits.
  add("err-commit-version")
      .send(create())
      .send(begin()).send(commit_as(1, 5))
      .send(begin()).send(commit_as(2, 0))
      .send(begin()).send(commit_as(3, 5))
      .send(begin()).send(commit_as(4, 3))
      .send(begin()).send(commit_as(5, uint64_t{1} << 40));
  add("err-no-free-slot")
      .send(create("policy", {.slots = 2, .history = 0}))
      .send(begin()).send(begin()).send(begin());
  add("err-rollback")
      .send(create())
      .send(rollback("policy", 1))
      .send(begin()).send(commit(1))
      .send(rollback("policy", 7))
      .send(rollback("nosuch", 1));
  add("err-drop").send(drop("nosuch")).send(create()).send(drop()).send(drop()).send(begin());
  {
    Input &in = add("err-device");
    in.send(create("gpu", {.placement = "cuda:2"}))    // not served
        .send(create("gpu", {.placement = "cuda:0,0"}))  // listed twice
        .send(create("gpu", {.placement = "cuda:"}))
        .send(create("gpu", {.placement = "cuda:-1"}))
        .send(create("gpu", {.placement = "cuda:0,1,2,3,4,5,6,7,8"}))
        .send(create("gpu", {.placement = "device:x"}))
        .send(create())
        .send(begin());
    in.raw(request_by_hand("commit", in.next_id(), [](Encoder &e) {  // an event of 63 bytes
      e.map(3).key("lease").u64(1).key("flags").u64(0).key("event");
      e.pk().pack_bin(63);
      e.pk().pack_bin_body(std::string(63, '\x01').data(), 63);
    }));
    in.send(commit_with_event(1, 0, filled(0)));
  }
  // A commit naming an event: a host event handle of a segment that does not exist, then one
  // of no implementation at all; each ends its lease.
  add("err-device-event")
      .send(create("gpu", {.placement = "cuda:0"}))
      .send(begin("gpu")).send(commit_with_event(1, LF_COMMIT_CHECK_FINITE, missing_event()))
      .send(begin("gpu")).send(commit_with_event(2, 0, filled(7)))
      .send(begin("gpu")).send(commit(3));
  {
    // Device arenas that run out: one adapter larger than a device, then device 1 filled so
    // that a replicated adapter gets its range on device 0 and must give it back.
    const msg::TensorArg half = tensor("t", LF_DTYPE_U8, {1 << 19});
    add("err-device-arena-full")
        .send(bare("huge", {half}, {.placement = "cuda:0", .slots = 4}))
        .send(bare("fill", {half}, {.placement = "cuda:1", .slots = 2, .history = 0}))
        .send(bare("tp", {half}, {.placement = "cuda:0,1", .slots = 2, .history = 0}))
        .send(bare("tp", {half}, {.placement = "cuda:0", .slots = 2, .history = 0}))
        .send(begin("tp"))
        .send(commit(1, LF_COMMIT_CHECK_FINITE | LF_COMMIT_CHECKSUM));
  }

  // --- The decoder of protocol 2 (ipc/messages.hpp).

  // Every string is valid UTF-8 without NUL: in the op, names, metadata, target modules and
  // placement, each spoiled in every way, beside a request that is fine.
  {
    Input &in = add("err-text-op");
    in.send(msg::List{});
    for (const Spoiler &sp : spoilers())
      in.raw(request_as(spoil("list", sp), in.next_id(), msg::List{}));
  }
  {
    Input &in = add("err-text-name");
    in.send(create());
    for (const Spoiler &sp : spoilers()) in.send(create(spoil("policy", sp)));
    in.send([] {
      msg::CreateAdapter c = create("tensor");
      c.tensors[1].name = spoil(kPeftB, spoilers()[0]);
      return c;
    }());
    // The names of the other requests, one spoiler each.
    in.send(info(spoil("policy", spoilers()[2])))
        .send(begin(spoil("policy", spoilers()[6])))
        .send(rollback(spoil("policy", spoilers()[4]), 1))
        .send(drop(spoil("policy", spoilers()[5])))
        .send(info());
  }
  {
    Input &in = add("err-text-metadata");
    for (const Spoiler &sp : spoilers()) {
      msg::CreateAdapter c = create();
      c.metadata = spoil(R"({"step": 0})", sp);
      in.send(c);
    }
    in.send(create()).send(info());
  }
  {
    Input &in = add("err-text-target-modules");
    for (const Spoiler &sp : spoilers()) {
      msg::CreateAdapter c = create();
      c.lora->target_modules.names[1] = spoil("v_proj", sp);
      in.send(c);
    }
    for (const Spoiler &sp : {spoilers()[0], spoilers()[6]}) {  // the comma-separated form
      in.raw(request_by_hand("create_adapter", in.next_id(), [&](Encoder &e) {
        e.map(3).key("name").str("policy").key("tensors").array(1);
        write_tensor(e, "w", "f32", {8});
        e.key("lora").map(2).key("rank").u64(4);
        e.key("target_modules").str(spoil("q_proj,v_proj", sp));
      }));
    }
    in.send(create()).send(info());
  }
  {
    Input &in = add("err-text-placement");
    for (const Spoiler &sp : spoilers()) in.send(create("gpu", {.placement = spoil("cuda:0", sp)}));
    in.send(create("gpu", {.placement = std::string("cuda:0\0,1", 9)}));
    in.send(create("gpu", {.placement = "cuda:0"})).send(info("gpu"));
  }

  // Unknown fields are refused, anywhere: protocol 1's pid and start, and names no schema has.
  {
    Input &in = add("err-unknown-field");
    in.send(create());
    in.raw(request_by_hand("begin_write", in.next_id(), [](Encoder &e) {  // protocol 1's form
      e.map(4).key("name").str("policy").key("pid").u64(1).key("start").u64(0);
      e.key("lease_ms").u64(30000);
    }));
    in.raw(request_by_hand("begin_write", in.next_id(), [](Encoder &e) {
      e.map(2).key("name").str("policy").key("pid").u64(1);
    }));
    in.raw(request_by_hand("hello", in.next_id(), [](Encoder &e) {
      e.map(3).key("protocol").u64(ipc::kProtocolVersion).key("pid").u64(1).key("start").u64(0);
    }));
    in.raw(request_by_hand("list", in.next_id(),
                           [](Encoder &e) { e.map(1).key("verbose").boolean(true); }));
    in.raw(request_by_hand("open_reader", in.next_id(),
                           [](Encoder &e) { e.map(1).key("pid").u64(1); }));
    in.raw(encoded([&](Encoder &e) {  // in the envelope
      e.map(3).key("op").str("stats").key("id").u64(in.next_id()).key("trace").str("x");
    }));
    in.raw(request_by_hand("create_adapter", in.next_id(), [](Encoder &e) {  // in a tensor
      e.map(2).key("name").str("strided").key("tensors").array(1);
      e.map(4).key("name").str("t").key("dtype").str("f32").key("shape").array(1).i64(4);
      e.key("stride").array(1).i64(1);
    }));
    in.raw(request_by_hand("create_adapter", in.next_id(), [](Encoder &e) {  // in lora
      e.map(3).key("name").str("dropout").key("tensors").array(1);
      write_tensor(e, "t", "f32", {4});
      e.key("lora").map(2).key("rank").u64(4).key("dropout").f64(0.1);
    }));
    in.raw(request_by_hand("commit", in.next_id(), [](Encoder &e) {  // a key that is no string
      e.map(2).key("lease").u64(1).u64(7).u64(0);
    }));
    in.send(begin()).send(commit(1));
  }
  // A field given twice is refused, even when both agree or one is nil.
  {
    Input &in = add("err-field-twice");
    in.send(create());
    in.raw(request_by_hand("begin_write", in.next_id(), [](Encoder &e) {
      e.map(2).key("name").str("policy").key("name").str("other");
    }));
    in.raw(request_by_hand("begin_write", in.next_id(), [](Encoder &e) {
      e.map(3).key("name").str("policy").key("lease_ms").nil().key("lease_ms").u64(5);
    }));
    in.raw(encoded([&](Encoder &e) {
      e.map(3).key("op").str("list").key("op").str("stats").key("id").u64(in.next_id());
    }));
    in.raw(encoded([&](Encoder &e) {
      const uint64_t id = in.next_id();
      e.map(3).key("op").str("list").key("id").u64(id).key("id").u64(id);
    }));
    in.raw(request_by_hand("create_adapter", in.next_id(), [](Encoder &e) {
      e.map(3).key("name").str("twice").key("tensors").array(1);
      write_tensor(e, "t", "f32", {4});
      e.key("tensors").array(1);
      write_tensor(e, "t", "f32", {4});
    }));
    in.raw(request_by_hand("create_adapter", in.next_id(), [](Encoder &e) {
      e.map(2).key("name").str("twice").key("tensors").array(1);
      e.map(4).key("name").str("t").key("dtype").str("f32").key("shape").array(1).i64(4);
      e.key("shape").array(1).i64(4);
    }));
    in.send(begin());
    in.raw(request_by_hand("commit", in.next_id(), [](Encoder &e) {
      e.map(2).key("lease").u64(1).key("lease").u64(1);
    }));
    in.send(commit(1));
  }
  // Only the process that began a write may commit or abort it (another process: LF_E_LEASE,
  // nothing changes), and a repeated commit answers only that process.
  add("err-foreign-lease")
      .send(create())
      .send(begin())
      .send(commit(1), Peer::kOther)
      .send(abort_lease(1), Peer::kOther)
      .send(commit(1, LF_COMMIT_CHECK_FINITE | LF_COMMIT_CHECKSUM, checksum_of_zeros()),
            Peer::kOther)
      .send(commit(1))
      .send(commit(1), Peer::kOther)
      .send(begin(), Peer::kOther)
      .send(commit(2), Peer::kSelf)
      .send(abort_lease(2))
      .send(abort_lease(2), Peer::kOther)
      .send(info());
  // A sender the kernel cannot name gets no lease, commit, abort or reader entry.
  add("err-no-credentials")
      .send(create())
      .send(begin(), Peer::kNone)
      .send(begin())
      .send(commit(1), Peer::kNone)
      .send(abort_lease(1), Peer::kNone)
      .send(msg::OpenReader{}, Peer::kNone)
      .send(commit(1))
      .send(info());
  // A request is the empty delimiter and one body frame (kFrameTag separates frames): extra
  // frames, a missing or non-empty delimiter, and a lone delimiter are refused.
  add("err-frames")
      .raw(std::string("extra") + std::string(kFrameTag) + std::string(kFrameTag) +
           msg::encode_request(1, msg::List{}))
      .raw(std::string("not empty") + std::string(kFrameTag) + msg::encode_request(2, msg::List{}))
      .raw(std::string(kFrameTag))
      .raw(std::string(kFrameTag) + msg::encode_request(4, msg::List{}) + std::string(kFrameTag))
      .raw(std::string(kFrameTag) + msg::encode_request(5, msg::List{}));  // the one right shape
  // The reader table holds 4 entries (the harness's arena).
  add("err-reader-table-full")
      .send(msg::OpenReader{}).send(msg::OpenReader{}).send(msg::OpenReader{})
      .send(msg::OpenReader{}).send(msg::OpenReader{}).send(msg::Stats{});
}

}  // namespace loraflip::fuzz::corpus
