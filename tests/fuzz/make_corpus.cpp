// Writes the seed corpus of the control-message fuzzer (tests/fuzz/corpus/).
//
//   make_corpus [OUTPUT_DIR]   (default: the corpus folder of the source tree it was built from)
//
// Every file is one input of tests/fuzz/harness.hpp: one or more control messages separated by
// kSeparator, handled in order from an empty arena, each optionally led by kPeerTag and a digit
// that names its sender. Files named ok-* must be answered ok from the first message to the
// last (the replay test checks it, so the seeds keep reaching deep states as the protocol
// grows); err-* must get at least one error; crash-*, regress-* and other names are inputs the
// fuzzer found, kept as regression tests (this program neither writes nor removes them).
//
// Well-formed requests are built from the message declaration (ipc/messages.hpp), so the seeds
// follow the protocol as it changes. Only what that encoder never writes is written by hand
// with ipc::Encoder: malformed messages, and legal wire forms other than the canonical one (a
// dtype as its number, modules as one string, absent or nil optional fields).
// Not run at build time: regenerate after a protocol change and commit the result.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "harness.hpp"
#include "ipc/messages.hpp"
#include "ipc/protocol.hpp"
#include "kernels/validate.hpp"
#include "loraflip.h"

#ifndef LF_FUZZ_CORPUS_DIR
#define LF_FUZZ_CORPUS_DIR "tests/fuzz/corpus"
#endif

namespace {

namespace ipc = loraflip::ipc;
namespace msg = loraflip::ipc::msg;
using ipc::Encoder;
using loraflip::fuzz::kFrameTag;
using loraflip::fuzz::kPeerTag;
using loraflip::fuzz::kSeparator;

// Who sends a request: the digit after kPeerTag (see harness.cpp, take_peer). A request without
// the tag comes from the replaying process too.
enum class Peer : char {
  kSelf = '0',   // the replaying process
  kOther = '1',  // another live process: pid 1
  kNone = '2',   // a sender the kernel could not name
};

// One corpus file: requests in order, ids counted from 1.
class Input {
 public:
  // A request built from the message declaration.
  template <msg::Message S>
  Input &send(const S &args, std::optional<Peer> from = std::nullopt) {
    return raw(msg::encode_request(next_id(), args), from);
  }
  // Bytes as they are: a request written by hand (take its id from next_id()), or not a
  // request at all.
  Input &raw(std::string bytes, std::optional<Peer> from = std::nullopt) {
    std::string part;
    if (from) {
      part.assign(kPeerTag);
      part += static_cast<char>(*from);
    }
    part += bytes;
    parts_.push_back(std::move(part));
    return *this;
  }
  uint64_t next_id() { return id_++; }
  std::string bytes() const {
    std::string out;
    for (size_t i = 0; i < parts_.size(); ++i) {
      if (i > 0) out += kSeparator;
      out += parts_[i];
    }
    return out;
  }

 private:
  std::vector<std::string> parts_;
  uint64_t id_ = 1;
};

// ---------------------------------------------------------------------------------------------
// Well-formed requests.

const std::string kPeftA = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight";
const std::string kPeftB = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight";

msg::TensorArg tensor(std::string name, int dtype, std::vector<int64_t> shape) {
  msg::TensorArg t;
  t.name = std::move(name);
  t.dtype.code = dtype;
  t.shape = std::move(shape);
  return t;
}

// Two f32 tensors of 4096 bytes each: a slot of 8192 bytes (a multiple of the slot alignment,
// so a checksum of the slot covers exactly the tensors).
std::vector<msg::TensorArg> peft_tensors() {
  return {tensor(kPeftA, LF_DTYPE_F32, {16, 64}), tensor(kPeftB, LF_DTYPE_F32, {64, 16})};
}
constexpr uint64_t kSlotBytes = 8192;

// The daemon's checksum of a slot no writer touched (the harness's arena starts zeroed).
uint64_t checksum_of_zeros() {
  const std::vector<unsigned char> zeros(kSlotBytes, 0);
  return loraflip::kernels::checksum(zeros.data(), zeros.size());
}

struct Layout {
  std::string placement = "host";
  uint64_t slots = 0;    // 0: history + 2
  int64_t history = -1;  // -1: the daemon's default
};

// An adapter of these tensors only: no LoRA parameters, no metadata.
msg::CreateAdapter bare(std::string name, std::vector<msg::TensorArg> tensors, Layout layout = {}) {
  msg::CreateAdapter c;
  c.name = std::move(name);
  c.tensors = std::move(tensors);
  c.slots = layout.slots;
  c.history = layout.history;
  c.placement = std::move(layout.placement);
  return c;
}

// A PEFT-like adapter, with LoRA parameters and metadata.
msg::CreateAdapter create(std::string name = "policy", Layout layout = {}) {
  msg::CreateAdapter c = bare(std::move(name), peft_tensors(), std::move(layout));
  c.lora.emplace();
  c.lora->rank = 16;
  c.lora->alpha = 32.0;
  c.lora->target_modules.names = {"q_proj", "v_proj"};
  c.metadata = R"({"step": 0})";
  return c;
}

msg::BeginWrite begin(std::string name = "policy", uint64_t lease_ms = 30000,
                      std::optional<uint64_t> token = std::nullopt) {
  msg::BeginWrite b;
  b.name = std::move(name);
  b.lease_ms = lease_ms;
  b.token = token;
  return b;
}

msg::Commit commit(uint64_t lease, uint64_t flags = LF_COMMIT_CHECK_FINITE,
                   std::optional<uint64_t> checksum = std::nullopt) {
  msg::Commit c;
  c.lease = lease;
  c.flags = flags;
  c.checksum = checksum;
  return c;
}

msg::Commit commit_with_event(uint64_t lease, uint64_t flags, const msg::Binary64 &event) {
  msg::Commit c = commit(lease, flags);
  c.event = event;
  return c;
}

msg::Hello hello(uint64_t protocol = ipc::kProtocolVersion) { return {protocol}; }
msg::Info info(std::string name = "policy") { return {std::move(name)}; }
msg::DropAdapter drop(std::string name = "policy") { return {std::move(name)}; }
msg::Rollback rollback(std::string name, uint64_t version) {
  msg::Rollback r;
  r.name = std::move(name);
  r.version = version;
  return r;
}
msg::Abort abort_lease(uint64_t lease) { return {lease}; }

msg::Binary64 filled(unsigned char byte) {
  msg::Binary64 b;
  b.bytes.fill(byte);
  return b;
}

// A host event handle (device/device_host.cpp, HostHandle: magic "LFEV", reserved, bytes, nonce,
// then a 40-byte shared-memory name; little-endian) of a segment that does not exist.
msg::Binary64 missing_event() {
  msg::Binary64 b;
  auto put = [&](size_t at, uint64_t v, size_t n) {
    for (size_t i = 0; i < n; ++i) b.bytes[at + i] = static_cast<unsigned char>(v >> (8 * i));
  };
  put(0, 0x4C464556, 4);  // "LFEV"
  put(16, 0x1234, 8);     // a nonce no segment has
  const std::string name = "loraflip.fuzz-no-such-event";
  std::copy(name.begin(), name.end(), b.bytes.begin() + 24);
  return b;
}

// ---------------------------------------------------------------------------------------------
// Requests written by hand.

std::string encoded(const std::function<void(Encoder &)> &write) {
  Encoder e;
  write(e);
  return e.take();
}

// {"op", "id", "args"} around args written by hand.
std::string request_by_hand(std::string_view op, uint64_t id,
                            const std::function<void(Encoder &)> &args) {
  return ipc::encode_request(op, id, encoded(args));
}

// A well-formed request of one op but under another op name (the args are the struct's).
template <msg::Message S>
std::string request_as(std::string_view op, uint64_t id, const S &args) {
  return ipc::encode_request(op, id, msg::encode_map(args));
}

void write_tensor(Encoder &e, std::string_view name, std::string_view dtype,
                  std::vector<int64_t> shape) {
  e.map(3).key("name").str(name).key("dtype").str(dtype).key("shape");
  msg::write_value(e, shape);
}

// Ways to spoil a string for the decoder's text check (ipc/text.hpp), each put inside a string
// that is otherwise fine; every one must be refused with LF_E_INVALID_ARGUMENT.
struct Spoiler {
  const char *what;
  std::string bytes;
};
const std::vector<Spoiler> &spoilers() {
  static const std::vector<Spoiler> all = {
      {"a byte that starts no character", "\xff"},
      {"a continuation byte alone", "\x80"},
      {"a character cut short", "\xc3("},
      {"an overlong '/'", "\xc0\xaf"},
      {"a surrogate", "\xed\xa0\x80"},
      {"a code point above U+10FFFF", "\xf4\x90\x80\x80"},
      {"a NUL byte", std::string(1, '\0')},
  };
  return all;
}
// `text` with the spoiler inside it (after its first two bytes).
std::string spoil(std::string_view text, const Spoiler &s) {
  const size_t at = std::min<size_t>(2, text.size());
  return std::string(text.substr(0, at)) + s.bytes + std::string(text.substr(at));
}

// ---------------------------------------------------------------------------------------------
// The seeds.

using Seeds = std::vector<std::pair<std::string, Input>>;

void ok_seeds(Seeds &s) {
  auto add = [&](std::string name) -> Input & {
    return s.emplace_back(std::move(name), Input{}).second;
  };

  add("ok-hello").send(hello());
  add("ok-list-empty").send(msg::List{});
  add("ok-stats-empty").send(msg::Stats{});
  add("ok-create").send(create("policy", {.placement = "host", .slots = 4, .history = 2}));
  {
    // The other wire forms a create may take: dtypes by LF_DTYPE_* number, target modules as one
    // comma-separated string, nil for an optional field, and a 6-dimensional and a scalar tensor.
    Input &in = add("ok-create-codes");
    in.raw(request_by_hand("create_adapter", in.next_id(), [](Encoder &e) {
      e.map(6).key("name").str("ref:v1.0_x-y").key("tensors").array(3);
      e.map(3).key("name").str("w").key("dtype").i64(LF_DTYPE_F32).key("shape").array(1).i64(8);
      e.map(3).key("name").str("h").key("dtype").i64(LF_DTYPE_BF16).key("shape").array(6);
      for (int i = 0; i < 6; ++i) e.i64(2);
      write_tensor(e, "i", "i64", {});
      e.key("lora").map(3).key("rank").u64(4).key("target_modules").str("q_proj,k_proj");
      e.key("use_rslora").boolean(true);
      e.key("history").i64(-1).key("slots").u64(0).key("placement").nil();
    }));
  }
  add("ok-create-info-list-stats").send(create()).send(info()).send(msg::List{}).send(msg::Stats{});
  add("ok-write-commit").send(create()).send(begin()).send(commit(1)).send(info());
  add("ok-write-commit-checksum")
      .send(create())
      .send(begin())
      .send(commit(1, LF_COMMIT_CHECK_FINITE | LF_COMMIT_CHECKSUM, checksum_of_zeros()));
  add("ok-write-abort")
      .send(create())
      .send(begin()).send(abort_lease(1))
      .send(begin()).send(commit(2, 0));
  add("ok-rollback")
      .send(create())
      .send(begin()).send(commit(1))
      .send(begin()).send(commit(2))
      .send(begin()).send(commit(3))
      .send(rollback("policy", 2))
      .send(info());
  add("ok-drop")
      .send(create()).send(begin()).send(commit(1))
      .send(drop()).send(msg::List{}).send(create());
  add("ok-two-adapters")
      .send(create("a")).send(create("b", {.slots = 3, .history = 1}))
      .send(begin("a")).send(begin("b"))
      .send(commit(2)).send(commit(1))
      .send(msg::List{}).send(msg::Stats{});
  add("ok-everything")
      .send(hello()).send(msg::OpenReader{}).send(create()).send(msg::List{})
      .send(begin()).send(commit(1))
      .send(begin()).send(commit(2))
      .send(commit(2))  // repeated
      .send(rollback("policy", 1))
      .send(begin()).send(abort_lease(3))
      .send(info()).send(msg::Stats{}).send(drop());

  // A reader registers through the daemon: entries for this process (the table holds 4).
  add("ok-open-reader")
      .send(hello()).send(msg::OpenReader{}).send(msg::Stats{}).send(msg::OpenReader{})
      .send(msg::OpenReader{}).send(msg::Stats{});
  // A commit asked again (a client that lost the reply) answers {repeated: true} with the
  // version it made, and flips nothing; so does one asked after later commits.
  add("ok-commit-repeated")
      .send(create())
      .send(begin())
      .send(commit(1, LF_COMMIT_CHECK_FINITE | LF_COMMIT_CHECKSUM, checksum_of_zeros()))
      .send(commit(1, LF_COMMIT_CHECK_FINITE | LF_COMMIT_CHECKSUM, checksum_of_zeros()))
      .send(begin()).send(commit(2))
      .send(commit(1)).send(commit(2, 0))
      .send(info());
  // A begin_write asked again with its token (a client that lost the reply) gets the lease it
  // made, not a second slot: three asks fit an adapter of two slots. After the commit, the same
  // token begins anew.
  add("ok-begin-token")
      .send(create("policy", {.slots = 2, .history = 0}))
      .send(begin("policy", 30000, 7))
      .send(begin("policy", 30000, 7))
      .send(begin("policy", 30000, 7))
      .send(commit(1))
      .send(begin("policy", 30000, 7)).send(commit(2))
      .send(info());
  {
    // Envelopes and optional fields in the forms the encoder never writes: no id, no args, nil
    // args, keys in another order, nil for every optional field.
    Input &in = add("ok-envelope-forms");
    in.raw(encoded([](Encoder &e) { e.map(1).key("op").str("list"); }));
    in.raw(encoded(
        [&](Encoder &e) { e.map(2).key("op").str("stats").key("id").u64(in.next_id()); }));
    in.raw(encoded([&](Encoder &e) {
      e.map(3).key("args").nil().key("id").u64(in.next_id()).key("op").str("list");
    }));
    in.raw(encoded([&](Encoder &e) {
      e.map(3).key("args").map(0).key("op").str("stats").key("id").u64(in.next_id());
    }));
    in.raw(request_by_hand("create_adapter", in.next_id(), [](Encoder &e) {
      e.map(7).key("placement").nil().key("history").nil().key("slots").nil();
      e.key("metadata").nil().key("lora").nil();
      e.key("tensors").array(1);
      write_tensor(e, "w", "f16", {4, 4});
      e.key("name").str("forms");
    }));
    in.raw(request_by_hand("begin_write", in.next_id(), [](Encoder &e) {
      e.map(2).key("lease_ms").nil().key("name").str("forms");
    }));
    in.raw(request_by_hand("commit", in.next_id(), [](Encoder &e) {
      e.map(4).key("event").nil().key("checksum").nil().key("flags").nil().key("lease").u64(1);
    }));
    in.send(info("forms"));
  }
  // Text beyond ASCII where free text is allowed: 2-, 3- and 4-byte characters in metadata.
  add("ok-create-utf8-metadata")
      .send([] {
        msg::CreateAdapter c = create();
        c.metadata = "{\"note\": \"Gr\xc3\xbc\xc3\x9f" "e \xe2\x9c\x93 \xf0\x9d\x9b\xbc\"}";
        return c;
      }())
      .send(info());

  // Device placements, served by the harness's two host stand-in devices (1 MiB each).
  add("ok-device-write-commit")
      .send(create("gpu", {.placement = "cuda:0"}))
      .send(begin("gpu"))
      .send(commit(1, LF_COMMIT_CHECK_FINITE | LF_COMMIT_CHECKSUM, checksum_of_zeros()))
      .send(info("gpu")).send(msg::List{});
  add("ok-device-replicas")
      .send(create("tp", {.placement = "cuda:0,1"}))
      .send(begin("tp")).send(commit(1))
      .send(begin("tp"))
      .send(commit(2, LF_COMMIT_CHECK_FINITE | LF_COMMIT_CHECKSUM, checksum_of_zeros()))
      .send(rollback("tp", 1))
      .send(info("tp")).send(msg::Stats{});
  add("ok-device-second-first")
      .send(create("tp", {.placement = "device:1,0", .slots = 3, .history = 1}))
      .send(begin("tp")).send(commit(1, LF_COMMIT_CHECK_FINITE))
      .send(begin("tp")).send(commit(2))
      .send(begin("tp")).send(commit(3))
      .send(info("tp"));
  add("ok-device-abort-drop")
      .send(create("tp", {.placement = "cuda:0,1"}))
      .send(begin("tp")).send(commit(1))
      .send(begin("tp")).send(abort_lease(2))
      .send(begin("tp")).send(drop("tp")).send(msg::List{})
      .send(create("tp", {.placement = "cuda:1,0"}))
      .send(begin("tp")).send(commit(4))
      .send(info("tp"));
  add("ok-device-and-host")
      .send(create("a"))
      .send(create("b", {.placement = "cuda:0"}))
      .send(create("c", {.placement = "cuda:1"}))
      .send(create("d", {.placement = "cuda:0,1", .slots = 2, .history = 0}))
      .send(begin("a")).send(begin("b")).send(begin("c")).send(begin("d"))
      .send(commit(2, LF_COMMIT_CHECK_FINITE | LF_COMMIT_CHECKSUM)).send(commit(4))
      .send(commit(3, LF_COMMIT_CHECK_FINITE)).send(commit(1))
      .send(msg::List{}).send(msg::Stats{})
      // No lease left: the reclamation pass after the last request gives their device
      // ranges back.
      .send(drop("d")).send(drop("b"));
}

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

}  // namespace

int main(int argc, char **argv) {
  if (argc > 2 || (argc == 2 && (std::string_view(argv[1]) == "-h" ||
                                 std::string_view(argv[1]) == "--help"))) {
    std::fprintf(argc > 2 ? stderr : stdout, "usage: make_corpus [OUTPUT_DIR]   (default: %s)\n",
                 LF_FUZZ_CORPUS_DIR);
    return argc > 2 ? 2 : 0;
  }
  const std::filesystem::path out = argc == 2 ? argv[1] : LF_FUZZ_CORPUS_DIR;
  try {
    Seeds seeds;
    ok_seeds(seeds);
    err_seeds(seeds);
    std::set<std::string> names;
    std::filesystem::create_directories(out);
    for (const auto &[name, input] : seeds) {
      if (!names.insert(name).second) {
        std::fprintf(stderr, "make_corpus: seed %s is declared twice\n", name.c_str());
        return 1;
      }
      const std::filesystem::path file = out / (name + ".msgpack");
      std::ofstream f(file, std::ios::binary | std::ios::trunc);
      const std::string bytes = input.bytes();
      f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
      if (!f.flush()) {
        std::fprintf(stderr, "make_corpus: cannot write %s\n", file.c_str());
        return 1;
      }
    }
    std::printf("wrote %zu seeds to %s\n", seeds.size(), out.c_str());
  } catch (const std::exception &e) {
    std::fprintf(stderr, "make_corpus: %s\n", e.what());
    return 1;
  }
  return 0;
}
