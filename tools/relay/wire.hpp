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

// Bumped on any change of the messages below; a want of a protocol outside
// [kOldestRelayProtocol, kRelayProtocol] is refused.
// 2: incarnations (Have, Offer, Fetch) and `gone`, for dropped and re-created adapters.
// 3: Have's `active` and `stuck`, for rollbacks upstream. An upstream still answers protocol 2
//    followers as before (they are never offered a rollback); a protocol 3 follower that an
//    older upstream refuses asks again in protocol 2 (relay.cpp, Follower::run).
inline constexpr uint64_t kRelayProtocol = 3;
inline constexpr uint64_t kOldestRelayProtocol = 2;
// The largest chunk a follower may ask for and an upstream sends: a follower's socket takes
// no frame bigger than this (ZMQ_MAXMSGSIZE), so a hostile upstream cannot make it buffer more.
inline constexpr uint64_t kMaxChunkBytes = uint64_t{16} << 20;
inline constexpr uint64_t kMinChunkBytes = uint64_t{4} << 10;
// How long an upstream holds a want that has nothing to offer yet (a long poll).
inline constexpr uint64_t kMaxWaitMs = 10000;
// Adapters one want may name: the daemon's own table bound (ipc::kMaxAdapters).
inline constexpr size_t kMaxWanted = ipc::kMaxAdapters;

// What a follower has of one adapter: its newest version there (0: none), and the upstream's
// incarnation of the adapter that copy came from (0: not known to come from this upstream).
// An incarnation the upstream no longer has means the upstream dropped and re-created the
// adapter: its numbers started again, so `after` no longer says what is newer.
//
// Protocol 3 adds what a rollback upstream needs. `active`: the version active there now (0:
// none), which after a rollback is below `after`; the upstream offers its own active version
// when it is not newer than `after` but differs from `active` (same incarnation only), and the
// follower flips back to it if it keeps it. `stuck`: a version the follower was offered and
// cannot take: a rollback to a version it does not keep (versions never repeat in a daemon, so
// it cannot make it again), or any version of an adapter it does not follow (its own adapter of
// another schema or placement, incarnation 0). It is not offered again, or the follower would
// be offered it at every long poll; a newer version is offered once more.
// Both absent (a protocol 2 follower): no rollback is offered. Optional members, so that a
// follower asking in protocol 2 leaves them out of the map (an older upstream refuses them).
struct Have {
  std::string name;
  uint64_t after = 0;
  uint64_t incarnation = 0;
  std::optional<uint64_t> active;
  std::optional<uint64_t> stuck;
  static constexpr auto fields() {
    return std::tuple{required("name", &Have::name), required("after", &Have::after),
                      optional("incarnation", &Have::incarnation),
                      optional("active", &Have::active), optional("stuck", &Have::stuck)};
  }
};

// "Tell me of versions newer than these (or of a rollback)." With `all`, every adapter the
// upstream serves is offered, those not named counting as after 0.
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
  // Which creation of the adapter this is, upstream: its record's index << 32 | the record's
  // incarnation (both from the daemon's info). The daemon bumps a record's incarnation at each
  // create in it, and a re-created adapter may land in another record, so neither alone names
  // a creation. Never 0.
  uint64_t incarnation = 0;
  uint64_t version = 0, checksum = 0, slot_bytes = 0, slots = 0, history = 0;
  ipc::msg::InfoLora lora;
  std::string metadata;
  std::vector<ipc::msg::InfoTensor> tensors;
  static constexpr auto fields() {
    using R = Offer;
    return std::tuple{required("name", &R::name), required("incarnation", &R::incarnation),
                      required("version", &R::version),
                      required("checksum", &R::checksum), required("slot_bytes", &R::slot_bytes),
                      required("slots", &R::slots), required("history", &R::history),
                      required("lora", &R::lora), required("metadata", &R::metadata),
                      required("tensors", &R::tensors)};
  }
};
// One offer per want (none when the wait ended without a newer version): a list of offers
// would nest one level deeper than ipc::kMaxDepth allows. The upstream takes the adapters in
// turn per follower, so a busy adapter never starves the others.
//
// `gone` names the adapters of the want that came from this upstream (a Have with an
// incarnation) and that it no longer serves (dropped there): the follower drops its copy.
// Adapters a follower never got from this upstream are never named, so a follower's own
// adapters are never dropped by an upstream.
struct WantResult {
  std::optional<Offer> offer;
  std::vector<std::string> gone;
  static constexpr auto fields() {
    return std::tuple{optional("offer", &WantResult::offer), optional("gone", &WantResult::gone)};
  }
};

// "Send me bytes [offset, offset + bytes) of this version's slot image." LF_E_NO_VERSION when
// the upstream no longer holds that version (the follower asks what is newest again).
// The incarnation keeps a version of a dropped adapter from being taken for the same number
// of its re-creation.
struct Fetch {
  static constexpr std::string_view kOp = "fetch";
  std::string name;
  uint64_t incarnation = 0, version = 0, offset = 0, bytes = 0;
  static constexpr auto fields() {
    using R = Fetch;
    return std::tuple{required("name", &R::name), required("incarnation", &R::incarnation),
                      required("version", &R::version),
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
