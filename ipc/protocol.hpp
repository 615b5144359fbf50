// The control protocol: msgpack maps over ZeroMQ.
//
//   request  {"op": <string>, "id": <uint>, "args": <map, optional>}
//   reply    {"id": <uint>, "ok": true,  "result": <map>}
//            {"id": <uint>, "ok": false, "error": {"code": <int>, "message": <string>}}
//
// Codes are the LF_E_* numbers of loraflip.h. docs/protocol.md lists every op and field.
// Decoding enforces limits before any allocation grows with the input: a message larger than
// kMaxMessageBytes, nesting deeper than kMaxDepth, or a string, array or map longer than its
// limit is refused with an error, never trusted.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <msgpack.hpp>

#include "ipc/result.hpp"

namespace loraflip::ipc {

inline constexpr uint32_t kProtocolVersion = LF_PROTOCOL_VERSION;
// The largest request frame. The daemon's socket has it as ZMQ_MAXMSGSIZE, so ZeroMQ drops
// the connection of a peer that sends a bigger frame before any of it is buffered; the client
// library refuses to send one (LF_E_TOO_LARGE); and the daemon answers a request of more
// frames than the protocol names with an error. The biggest legitimate request, a
// create_adapter for every projection of an 80-layer model (1120 tensors of ~100 bytes), is
// ~150 KiB.
inline constexpr size_t kMaxMessageBytes = size_t{4} << 20;
// The largest reply a client takes (ZMQ_MAXMSGSIZE of its socket): a list or info of
// thousands of entries.
inline constexpr int64_t kMaxReplyBytes = int64_t{64} << 20;
inline constexpr size_t kMaxDepth = 6;
inline constexpr size_t kMaxArray = 65536;
inline constexpr size_t kMaxMap = 256;
inline constexpr size_t kMaxString = 65536;
inline constexpr size_t kMaxBinary = 65536;

// Decodes one complete msgpack object (trailing bytes are an error) within the limits above.
// Clients pass kMaxReplyBytes for replies.
Result<msgpack::object_handle> decode(const void *data, size_t size,
                                      size_t max_bytes = kMaxMessageBytes);

// Typed, checked access to the fields of a msgpack map. Every getter fails with LF_E_PROTOCOL
// (missing field, wrong type) and a message naming the field.
class MapView {
 public:
  static Result<MapView> of(const msgpack::object &o, std::string_view what);
  const msgpack::object *find(std::string_view key) const;
  Result<std::string_view> str(std::string_view key) const;
  Result<uint64_t> uint(std::string_view key) const;
  Result<int64_t> integer(std::string_view key) const;
  Result<double> number(std::string_view key) const;
  Result<bool> boolean(std::string_view key) const;
  Result<MapView> map(std::string_view key) const;
  Result<std::vector<const msgpack::object *>> array(std::string_view key) const;
  // The optional forms return `fallback` when the field is absent or nil, but still fail on a
  // present field of the wrong type.
  Result<std::string_view> str_or(std::string_view key, std::string_view fallback) const;
  Result<uint64_t> uint_or(std::string_view key, uint64_t fallback) const;
  Result<int64_t> integer_or(std::string_view key, int64_t fallback) const;
  Result<double> number_or(std::string_view key, double fallback) const;
  Result<bool> boolean_or(std::string_view key, bool fallback) const;

 private:
  explicit MapView(const msgpack::object_map *m) : map_(m) {}
  const msgpack::object_map *map_;
};

Result<uint64_t> as_uint(const msgpack::object &o, std::string_view what);
Result<int64_t> as_int(const msgpack::object &o, std::string_view what);
Result<std::string_view> as_str(const msgpack::object &o, std::string_view what);

// Writes msgpack into a buffer; thin sugar over msgpack::packer for maps built in order.
class Encoder {
 public:
  Encoder() : pk_(buf_) {}
  msgpack::packer<msgpack::sbuffer> &pk() { return pk_; }
  Encoder &map(uint32_t n) { pk_.pack_map(n); return *this; }
  Encoder &array(uint32_t n) { pk_.pack_array(n); return *this; }
  Encoder &key(std::string_view k) { return str(k); }
  Encoder &str(std::string_view s) {
    pk_.pack_str(static_cast<uint32_t>(s.size()));
    pk_.pack_str_body(s.data(), static_cast<uint32_t>(s.size()));
    return *this;
  }
  Encoder &u64(uint64_t v) { pk_.pack_uint64(v); return *this; }
  Encoder &i64(int64_t v) { pk_.pack_int64(v); return *this; }
  Encoder &f64(double v) { pk_.pack_double(v); return *this; }
  Encoder &boolean(bool v) { v ? pk_.pack_true() : pk_.pack_false(); return *this; }
  Encoder &nil() { pk_.pack_nil(); return *this; }
  Encoder &object(const msgpack::object &o) { pk_.pack(o); return *this; }
  const char *data() const { return buf_.data(); }
  size_t size() const { return buf_.size(); }
  std::string take() const { return std::string(buf_.data(), buf_.size()); }

 private:
  msgpack::sbuffer buf_;
  msgpack::packer<msgpack::sbuffer> pk_;
};

// Reply envelopes. `result` is a complete msgpack map (from an Encoder).
std::string encode_ok(uint64_t id, std::string_view result);
std::string encode_error(uint64_t id, const Error &error);

// Request envelope, as the client sends it.
std::string encode_request(std::string_view op, uint64_t id, std::string_view args);

// A msgpack object as JSON text (for the C API's list, info and stats). Binary data, which no
// reply holds today, is written as a string of hex digits.
std::string to_json(const msgpack::object &o);

// Topic of the events socket for one adapter: "flip/<name>/"; names cannot hold '/', so one
// adapter's topic is never a prefix of another's.
std::string event_topic(std::string_view adapter);
inline constexpr std::string_view kEventTopicAll = "flip/";

}  // namespace loraflip::ipc
