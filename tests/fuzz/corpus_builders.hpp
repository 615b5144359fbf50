// What the seed files of make_corpus share: a corpus input (requests in order, each from a
// named sender), the well-formed requests built from the message declaration
// (ipc/messages.hpp), and the helpers that write by hand what that encoder never writes.
// corpus_ok.cpp and corpus_err.cpp declare the seeds with them; make_corpus.cpp writes them.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "harness.hpp"
#include "ipc/messages.hpp"
#include "ipc/protocol.hpp"
#include "kernels/validate.hpp"
#include "loraflip.h"

namespace loraflip::fuzz::corpus {

namespace msg = loraflip::ipc::msg;
using ipc::Encoder;

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

inline const std::string kPeftA = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight";
inline const std::string kPeftB = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight";

inline msg::TensorArg tensor(std::string name, int dtype, std::vector<int64_t> shape) {
  msg::TensorArg t;
  t.name = std::move(name);
  t.dtype.code = dtype;
  t.shape = std::move(shape);
  return t;
}

// Two f32 tensors of 4096 bytes each: a slot of 8192 bytes (a multiple of the slot alignment,
// so a checksum of the slot covers exactly the tensors).
inline std::vector<msg::TensorArg> peft_tensors() {
  return {tensor(kPeftA, LF_DTYPE_F32, {16, 64}), tensor(kPeftB, LF_DTYPE_F32, {64, 16})};
}
inline constexpr uint64_t kSlotBytes = 8192;

// The daemon's checksum of a slot no writer touched (the harness's arena starts zeroed).
inline uint64_t checksum_of_zeros() {
  const std::vector<unsigned char> zeros(kSlotBytes, 0);
  return loraflip::kernels::checksum(zeros.data(), zeros.size());
}

struct Layout {
  std::string placement = "host";
  uint64_t slots = 0;    // 0: history + 2
  int64_t history = -1;  // -1: the daemon's default
};

// An adapter of these tensors only: no LoRA parameters, no metadata.
inline msg::CreateAdapter bare(std::string name, std::vector<msg::TensorArg> tensors,
                               Layout layout = {}) {
  msg::CreateAdapter c;
  c.name = std::move(name);
  c.tensors = std::move(tensors);
  c.slots = layout.slots;
  c.history = layout.history;
  c.placement = std::move(layout.placement);
  return c;
}

// A PEFT-like adapter, with LoRA parameters and metadata.
inline msg::CreateAdapter create(std::string name = "policy", Layout layout = {}) {
  msg::CreateAdapter c = bare(std::move(name), peft_tensors(), std::move(layout));
  c.lora.emplace();
  c.lora->rank = 16;
  c.lora->alpha = 32.0;
  c.lora->target_modules.names = {"q_proj", "v_proj"};
  c.metadata = R"({"step": 0})";
  return c;
}

inline msg::BeginWrite begin(std::string name = "policy", uint64_t lease_ms = 30000,
                             std::optional<uint64_t> token = std::nullopt) {
  msg::BeginWrite b;
  b.name = std::move(name);
  b.lease_ms = lease_ms;
  b.token = token;
  return b;
}

inline msg::Commit commit(uint64_t lease, uint64_t flags = LF_COMMIT_CHECK_FINITE,
                          std::optional<uint64_t> checksum = std::nullopt) {
  msg::Commit c;
  c.lease = lease;
  c.flags = flags;
  c.checksum = checksum;
  return c;
}

// A commit under a number the writer chose (a follower keeping its upstream's numbers).
inline msg::Commit commit_as(uint64_t lease, uint64_t version, uint64_t flags = 0,
                             std::optional<uint64_t> checksum = std::nullopt) {
  msg::Commit c = commit(lease, flags, checksum);
  c.version = version;
  return c;
}

inline msg::Commit commit_with_event(uint64_t lease, uint64_t flags, const msg::Binary64 &event) {
  msg::Commit c = commit(lease, flags);
  c.event = event;
  return c;
}

inline msg::Hello hello(uint64_t protocol = ipc::kProtocolVersion) { return {protocol}; }
inline msg::Info info(std::string name = "policy") { return {std::move(name)}; }
inline msg::DropAdapter drop(std::string name = "policy") { return {std::move(name)}; }
inline msg::Rollback rollback(std::string name, uint64_t version) {
  msg::Rollback r;
  r.name = std::move(name);
  r.version = version;
  return r;
}
inline msg::Abort abort_lease(uint64_t lease) { return {lease}; }

inline msg::Binary64 filled(unsigned char byte) {
  msg::Binary64 b;
  b.bytes.fill(byte);
  return b;
}

// A host event handle (device/device_host_internal.hpp, HostHandle: magic "LFEV", reserved,
// bytes, nonce, then a 40-byte shared-memory name; little-endian) of a segment that does not
// exist.
inline msg::Binary64 missing_event() {
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

inline std::string encoded(const std::function<void(Encoder &)> &write) {
  Encoder e;
  write(e);
  return e.take();
}

// {"op", "id", "args"} around args written by hand.
inline std::string request_by_hand(std::string_view op, uint64_t id,
                                   const std::function<void(Encoder &)> &args) {
  return ipc::encode_request(op, id, encoded(args));
}

// A well-formed request of one op but under another op name (the args are the struct's).
template <msg::Message S>
std::string request_as(std::string_view op, uint64_t id, const S &args) {
  return ipc::encode_request(op, id, msg::encode_map(args));
}

inline void write_tensor(Encoder &e, std::string_view name, std::string_view dtype,
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
inline const std::vector<Spoiler> &spoilers() {
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
inline std::string spoil(std::string_view text, const Spoiler &s) {
  const size_t at = std::min<size_t>(2, text.size());
  return std::string(text.substr(0, at)) + s.bytes + std::string(text.substr(at));
}

// ---------------------------------------------------------------------------------------------
// The seeds: files named ok-* (every request answered ok) and err-* (at least one error), in
// the order they are declared.

using Seeds = std::vector<std::pair<std::string, Input>>;

void ok_seeds(Seeds &s);   // corpus_ok.cpp
void err_seeds(Seeds &s);  // corpus_err.cpp

}  // namespace loraflip::fuzz::corpus
