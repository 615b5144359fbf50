#include "ipc/protocol.hpp"

#include <cmath>
#include <cstdio>
#include <limits>

namespace loraflip::ipc {
namespace {

Error bad(std::string message) { return make_error(LF_E_PROTOCOL, std::move(message)); }

std::string quoted(std::string_view what) { return "'" + std::string(what) + "'"; }

}  // namespace

Result<msgpack::object_handle> decode(const void *data, size_t size, size_t max_bytes) {
  if (size > max_bytes)
    return make_error(LF_E_TOO_LARGE, "message of " + std::to_string(size) +
                                          " bytes is over the limit of " +
                                          std::to_string(max_bytes));
  if (size == 0) return bad("empty message");
  try {
    const msgpack::unpack_limit limits(kMaxArray, kMaxMap, kMaxString, kMaxBinary, 0, kMaxDepth);
    size_t offset = 0;
    msgpack::object_handle oh = msgpack::unpack(static_cast<const char *>(data), size, offset,
                                                nullptr, nullptr, limits);
    if (offset != size) return bad("trailing bytes after the message");
    return oh;
  } catch (const msgpack::depth_size_overflow &) {
    return make_error(LF_E_TOO_LARGE, "message nested too deeply");
  } catch (const msgpack::size_overflow &e) {
    return make_error(LF_E_TOO_LARGE, std::string("message over a decoding limit: ") + e.what());
  } catch (const msgpack::insufficient_bytes &) {
    return bad("truncated message");
  } catch (const std::bad_alloc &) {
    return make_error(LF_E_TOO_LARGE, "message too large to decode");
  } catch (const std::exception &e) {
    return bad(std::string("malformed message: ") + e.what());
  }
}

Result<uint64_t> as_uint(const msgpack::object &o, std::string_view what) {
  if (o.type == msgpack::type::POSITIVE_INTEGER) return o.via.u64;
  return bad(quoted(what) + " must be a non-negative integer");
}

Result<int64_t> as_int(const msgpack::object &o, std::string_view what) {
  if (o.type == msgpack::type::NEGATIVE_INTEGER) return o.via.i64;
  if (o.type == msgpack::type::POSITIVE_INTEGER &&
      o.via.u64 <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
    return static_cast<int64_t>(o.via.u64);
  return bad(quoted(what) + " must be an integer");
}

Result<std::string_view> as_str(const msgpack::object &o, std::string_view what) {
  if (o.type == msgpack::type::STR) return std::string_view(o.via.str.ptr, o.via.str.size);
  return bad(quoted(what) + " must be a string");
}

Result<MapView> MapView::of(const msgpack::object &o, std::string_view what) {
  if (o.type != msgpack::type::MAP) return bad(quoted(what) + " must be a map");
  return MapView(&o.via.map);
}

const msgpack::object *MapView::find(std::string_view key) const {
  for (uint32_t i = 0; i < map_->size; ++i) {
    const msgpack::object &k = map_->ptr[i].key;
    if (k.type == msgpack::type::STR && std::string_view(k.via.str.ptr, k.via.str.size) == key)
      return &map_->ptr[i].val;
  }
  return nullptr;
}

#define LF_REQUIRED(key)                                               \
  const msgpack::object *o = find(key);                                \
  if (o == nullptr) return bad("missing field " + quoted(key))

Result<std::string_view> MapView::str(std::string_view key) const {
  LF_REQUIRED(key);
  return as_str(*o, key);
}

Result<uint64_t> MapView::uint(std::string_view key) const {
  LF_REQUIRED(key);
  return as_uint(*o, key);
}

Result<int64_t> MapView::integer(std::string_view key) const {
  LF_REQUIRED(key);
  return as_int(*o, key);
}

Result<double> MapView::number(std::string_view key) const {
  LF_REQUIRED(key);
  if (o->type == msgpack::type::FLOAT32 || o->type == msgpack::type::FLOAT64) return o->via.f64;
  if (o->type == msgpack::type::POSITIVE_INTEGER) return static_cast<double>(o->via.u64);
  if (o->type == msgpack::type::NEGATIVE_INTEGER) return static_cast<double>(o->via.i64);
  return bad(quoted(key) + " must be a number");
}

Result<bool> MapView::boolean(std::string_view key) const {
  LF_REQUIRED(key);
  if (o->type == msgpack::type::BOOLEAN) return o->via.boolean;
  return bad(quoted(key) + " must be true or false");
}

Result<MapView> MapView::map(std::string_view key) const {
  LF_REQUIRED(key);
  return MapView::of(*o, key);
}

Result<std::vector<const msgpack::object *>> MapView::array(std::string_view key) const {
  LF_REQUIRED(key);
  if (o->type != msgpack::type::ARRAY) return bad(quoted(key) + " must be an array");
  std::vector<const msgpack::object *> items;
  items.reserve(o->via.array.size);
  for (uint32_t i = 0; i < o->via.array.size; ++i) items.push_back(&o->via.array.ptr[i]);
  return items;
}

#undef LF_REQUIRED

namespace {
bool absent(const msgpack::object *o) { return o == nullptr || o->type == msgpack::type::NIL; }
}  // namespace

Result<std::string_view> MapView::str_or(std::string_view key, std::string_view fallback) const {
  return absent(find(key)) ? Result<std::string_view>(fallback) : str(key);
}
Result<uint64_t> MapView::uint_or(std::string_view key, uint64_t fallback) const {
  return absent(find(key)) ? Result<uint64_t>(fallback) : uint(key);
}
Result<int64_t> MapView::integer_or(std::string_view key, int64_t fallback) const {
  return absent(find(key)) ? Result<int64_t>(fallback) : integer(key);
}
Result<double> MapView::number_or(std::string_view key, double fallback) const {
  return absent(find(key)) ? Result<double>(fallback) : number(key);
}
Result<bool> MapView::boolean_or(std::string_view key, bool fallback) const {
  return absent(find(key)) ? Result<bool>(fallback) : boolean(key);
}

std::string encode_ok(uint64_t id, std::string_view result) {
  Encoder e;
  e.map(3).key("id").u64(id).key("ok").boolean(true).key("result");
  std::string out = e.take();
  out.append(result);
  return out;
}

std::string encode_error(uint64_t id, const Error &error) {
  Encoder e;
  e.map(3).key("id").u64(id).key("ok").boolean(false).key("error");
  e.map(2).key("code").i64(error.code).key("message").str(error.message);
  return e.take();
}

std::string encode_request(std::string_view op, uint64_t id, std::string_view args) {
  Encoder e;
  e.map(3).key("op").str(op).key("id").u64(id).key("args");
  std::string out = e.take();
  out.append(args);
  return out;
}

namespace {

void json_string(std::string &out, std::string_view s) {
  out += '"';
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  out += '"';
}

void json_value(std::string &out, const msgpack::object &o) {
  switch (o.type) {
    case msgpack::type::NIL: out += "null"; break;
    case msgpack::type::BOOLEAN: out += o.via.boolean ? "true" : "false"; break;
    case msgpack::type::POSITIVE_INTEGER: out += std::to_string(o.via.u64); break;
    case msgpack::type::NEGATIVE_INTEGER: out += std::to_string(o.via.i64); break;
    case msgpack::type::FLOAT32:
    case msgpack::type::FLOAT64: {
      if (!std::isfinite(o.via.f64)) { out += "null"; break; }
      char buf[32];
      std::snprintf(buf, sizeof buf, "%.17g", o.via.f64);
      out += buf;
      break;
    }
    case msgpack::type::STR: json_string(out, {o.via.str.ptr, o.via.str.size}); break;
    case msgpack::type::BIN: {
      std::string hex;
      static const char digits[] = "0123456789abcdef";
      for (uint32_t i = 0; i < o.via.bin.size; ++i) {
        const auto b = static_cast<unsigned char>(o.via.bin.ptr[i]);
        hex += digits[b >> 4];
        hex += digits[b & 15];
      }
      json_string(out, hex);
      break;
    }
    case msgpack::type::ARRAY:
      out += '[';
      for (uint32_t i = 0; i < o.via.array.size; ++i) {
        if (i) out += ',';
        json_value(out, o.via.array.ptr[i]);
      }
      out += ']';
      break;
    case msgpack::type::MAP:
      out += '{';
      for (uint32_t i = 0; i < o.via.map.size; ++i) {
        if (i) out += ',';
        const msgpack::object &k = o.via.map.ptr[i].key;
        if (k.type == msgpack::type::STR) {
          json_string(out, {k.via.str.ptr, k.via.str.size});
        } else {
          std::string inner;
          json_value(inner, k);
          json_string(out, inner);
        }
        out += ':';
        json_value(out, o.via.map.ptr[i].val);
      }
      out += '}';
      break;
    default: out += "null"; break;
  }
}

}  // namespace

std::string to_json(const msgpack::object &o) {
  std::string out;
  json_value(out, o);
  return out;
}

std::string event_topic(std::string_view adapter) {
  return std::string(kEventTopicAll) + std::string(adapter) + "/";
}

}  // namespace loraflip::ipc
