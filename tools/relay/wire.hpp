// The relay protocol: what crosses the TCP link between an upstream `loraflip-relay serve` and
// its followers, declared once here with the message machinery of ipc/messages.hpp (the same
// generic decoder checks every field's type, presence, unknown fields and UTF-8), inside the
// limits of ipc::decode. Every message is one request and one reply on a DEALER (follower) to
// ROUTER (upstream) connection under CurveZMQ:
//
//   request  frame 1: {"op", "id", "args"} (ipc::encode_request)
//   reply    frame 1: {"id", "ok", "result" | "error"} (ipc::encode_ok / encode_error)
//            frame 2, a fetch's reply only: the chunk's bytes (at most kMaxChunkBytes), kept out
//            of msgpack so that a chunk is neither copied into nor bounded by the decoder.
//
// docs/architecture.md ("Following another node") says why the protocol is pull-based.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

#include "ipc/messages.hpp"

namespace loraflip::relay::wire {

using ipc::msg::optional;
using ipc::msg::required;

// Bumped on any change of the messages below; a want of another protocol is refused.
inline constexpr uint64_t kRelayProtocol = 1;
// The largest chunk a follower may ask for and an upstream sends: a follower's socket takes
// no frame bigger than this (ZMQ_MAXMSGSIZE), so a hostile upstream cannot make it buffer more.
inline constexpr uint64_t kMaxChunkBytes = uint64_t{16} << 20;
inline constexpr uint64_t kMinChunkBytes = uint64_t{4} << 10;
// How long an upstream holds a want that has nothing to offer yet (a long poll).
inline constexpr uint64_t kMaxWaitMs = 10000;
// Adapters one want may name: the daemon's own table bound (ipc::kMaxAdapters).
inline constexpr size_t kMaxWanted = ipc::kMaxAdapters;

// What a follower has of one adapter: its newest version there (0: none).
struct Have {
  std::string name;
  uint64_t after = 0;
  static constexpr auto fields() {
    return std::tuple{required("name", &Have::name), required("after", &Have::after)};
  }
};

// "Tell me of versions newer than these." With `all`, every adapter the upstream serves is
// offered, those not named counting as after 0.
struct Want {
  static constexpr std::string_view kOp = "want";
  uint64_t protocol = 0;
  std::vector<Have> adapters;
  bool all = false;
  uint64_t wait_ms = 0;  // at most kMaxWaitMs
  static constexpr auto fields() {
    return std::tuple{required("protocol", &Want::protocol), required("adapters", &Want::adapters),
                      optional("all", &Want::all), optional("wait_ms", &Want::wait_ms)};
  }
};

// One version an upstream can send: the adapter's whole description, so that a follower can
// create it, and the slot image's size and checksum (kernels::checksum over slot_bytes).
struct Offer {
  std::string name;
  uint64_t version = 0, checksum = 0, slot_bytes = 0, slots = 0, history = 0;
  ipc::msg::InfoLora lora;
  std::string metadata;
  std::vector<ipc::msg::InfoTensor> tensors;
  static constexpr auto fields() {
    using R = Offer;
    return std::tuple{required("name", &R::name), required("version", &R::version),
                      required("checksum", &R::checksum), required("slot_bytes", &R::slot_bytes),
                      required("slots", &R::slots), required("history", &R::history),
                      required("lora", &R::lora), required("metadata", &R::metadata),
                      required("tensors", &R::tensors)};
  }
};
// One offer per want (none when the wait ended without a newer version): a list of offers
// would nest one level deeper than ipc::kMaxDepth allows. The upstream takes the adapters in
// turn per follower, so a busy adapter never starves the others.
struct WantResult {
  std::optional<Offer> offer;
  static constexpr auto fields() { return std::tuple{optional("offer", &WantResult::offer)}; }
};

// "Send me bytes [offset, offset + bytes) of this version's slot image." LF_E_NO_VERSION when
// the upstream no longer holds that version (the follower asks what is newest again).
struct Fetch {
  static constexpr std::string_view kOp = "fetch";
  std::string name;
  uint64_t version = 0, offset = 0, bytes = 0;
  static constexpr auto fields() {
    using R = Fetch;
    return std::tuple{required("name", &R::name), required("version", &R::version),
                      required("offset", &R::offset), required("bytes", &R::bytes)};
  }
};
// The reply's first frame; the bytes follow as the second.
struct FetchResult {
  std::string name;
  uint64_t version = 0, offset = 0, bytes = 0;
  static constexpr auto fields() {
    using R = FetchResult;
    return std::tuple{required("name", &R::name), required("version", &R::version),
                      required("offset", &R::offset), required("bytes", &R::bytes)};
  }
};

// The checks of the values a peer sends that the decoder cannot know: names, ranges, and that
// an offer describes a slot image a follower can take (tensors inside it, a sane size).
Status check(const Want &w);
Status check(const Fetch &f);
Status check(const Offer &o);

}  // namespace loraflip::relay::wire
