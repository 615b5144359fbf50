#include "ipc/messages.hpp"

#include <cstdio>
#include <limits>

#include "ipc/dtype.hpp"
#include "ipc/text.hpp"

namespace loraflip::ipc::msg {
namespace {

Error wrong_type(const Path &p, const char *what) {
  return make_error(LF_E_PROTOCOL, "'" + p.str() + "' must be " + what);
}

}  // namespace

std::string Path::str() const {
  std::string parent_text = parent != nullptr ? parent->str() : std::string();
  if (index >= 0) return parent_text + "[" + std::to_string(index) + "]";
  if (parent_text.empty()) return std::string(key);
  return parent_text + "." + std::string(key);
}

namespace detail {
std::string shown_key(std::string_view key) { return printable(key, 64); }
}  // namespace detail

Status read_value(const msgpack::object &o, uint64_t &v, const Path &p) {
  if (o.type != msgpack::type::POSITIVE_INTEGER) return wrong_type(p, "a non-negative integer");
  v = o.via.u64;
  return {};
}

Status read_value(const msgpack::object &o, uint32_t &v, const Path &p) {
  if (o.type != msgpack::type::POSITIVE_INTEGER || o.via.u64 > UINT32_MAX)
    return wrong_type(p, "an integer from 0 to 4294967295");
  v = static_cast<uint32_t>(o.via.u64);
  return {};
}

Status read_value(const msgpack::object &o, int64_t &v, const Path &p) {
  if (o.type == msgpack::type::NEGATIVE_INTEGER) {
    v = o.via.i64;
    return {};
  }
  if (o.type == msgpack::type::POSITIVE_INTEGER &&
      o.via.u64 <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
    v = static_cast<int64_t>(o.via.u64);
    return {};
  }
  return wrong_type(p, "an integer");
}

Status read_value(const msgpack::object &o, double &v, const Path &p) {
  switch (o.type) {
    case msgpack::type::FLOAT32:
    case msgpack::type::FLOAT64: v = o.via.f64; return {};
    case msgpack::type::POSITIVE_INTEGER: v = static_cast<double>(o.via.u64); return {};
    case msgpack::type::NEGATIVE_INTEGER: v = static_cast<double>(o.via.i64); return {};
    default: return wrong_type(p, "a number");
  }
}

Status read_value(const msgpack::object &o, bool &v, const Path &p) {
  if (o.type != msgpack::type::BOOLEAN) return wrong_type(p, "true or false");
  v = o.via.boolean;
  return {};
}

Status read_value(const msgpack::object &o, std::string &v, const Path &p) {
  if (o.type != msgpack::type::STR) return wrong_type(p, "a string");
  const std::string_view text(o.via.str.ptr, o.via.str.size);
  // Strings become C strings (names, metadata in the arena) and JSON text: one check here
  // keeps both whole. The message says where, never echoing the bytes.
  if (Status s = check_text(text); !s)
    return make_error(LF_E_INVALID_ARGUMENT, "'" + p.str() + "' " + s.error().message);
  v.assign(text);
  return {};
}

Status read_value(const msgpack::object &o, Binary64 &v, const Path &p) {
  if (o.type != msgpack::type::BIN || o.via.bin.size != v.bytes.size())
    return wrong_type(p, "64 bytes of binary");
  std::copy(o.via.bin.ptr, o.via.bin.ptr + v.bytes.size(), v.bytes.begin());
  return {};
}

Status read_value(const msgpack::object &o, DType &v, const Path &p) {
  int64_t code = 0;
  if (o.type == msgpack::type::STR) {
    std::string name;
    if (Status s = read_value(o, name, p); !s) return s;
    code = dtype_from_name(name);
  } else if (Status s = read_value(o, code, p); !s) {
    return wrong_type(p, "a dtype name (\"bf16\") or LF_DTYPE_* number");
  }
  if (code < 0 || code > INT32_MAX || dtype_size(static_cast<int>(code)) == 0)
    return make_error(LF_E_INVALID_ARGUMENT, "'" + p.str() + "' names no known dtype");
  v.code = static_cast<int32_t>(code);
  return {};
}

Status read_value(const msgpack::object &o, ModuleList &v, const Path &p) {
  v.names.clear();
  if (o.type == msgpack::type::STR) {  // "q_proj,v_proj"
    std::string joined;
    if (Status s = read_value(o, joined, p); !s) return s;
    v = ModuleList::split(joined);
    return {};
  }
  if (o.type != msgpack::type::ARRAY)
    return wrong_type(p, "an array of module names or one comma-separated string");
  if (Status s = read_value(o, v.names, p); !s) return s;
  for (const std::string &name : v.names)
    if (name.find(',') != std::string::npos)
      return make_error(LF_E_INVALID_ARGUMENT, "'" + p.str() + "' holds a name with a comma");
  return {};
}

ModuleList ModuleList::split(std::string_view joined) {
  ModuleList list;
  while (!joined.empty()) {
    const size_t comma = joined.find(',');
    list.names.emplace_back(joined.substr(0, comma));
    if (comma == std::string_view::npos) break;
    joined.remove_prefix(comma + 1);
  }
  return list;
}

Status read_value(const msgpack::object &o, RawMap &v, const Path &p) {
  if (o.type != msgpack::type::MAP) return wrong_type(p, "a map");
  v.object = &o;
  return {};
}

void write_value(Encoder &e, uint64_t v) { e.u64(v); }
void write_value(Encoder &e, uint32_t v) { e.u64(v); }
void write_value(Encoder &e, int64_t v) { e.i64(v); }
void write_value(Encoder &e, double v) { e.f64(v); }
void write_value(Encoder &e, bool v) { e.boolean(v); }
void write_value(Encoder &e, const std::string &v) { e.str(v); }
void write_value(Encoder &e, const Binary64 &v) {
  e.pk().pack_bin(static_cast<uint32_t>(v.bytes.size()));
  e.pk().pack_bin_body(reinterpret_cast<const char *>(v.bytes.data()),
                       static_cast<uint32_t>(v.bytes.size()));
}
void write_value(Encoder &e, const DType &v) { e.str(dtype_name(v.code)); }
void write_value(Encoder &e, const ModuleList &v) { write_value(e, v.names); }

namespace {

// Finds the top-level "id" of a request without building it: a msgpack visitor that keeps
// nothing but its depth, and stops once the id is read or nesting goes past the decoding limit.
struct IdScanner : msgpack::null_visitor {
  size_t depth = 0;
  bool key_is_id = false;   // the top-level key just read was "id"
  bool in_key = false, in_value = false;
  bool found = false;
  uint64_t id = 0;

  bool start_map(uint32_t) { return ++depth <= kMaxDepth; }
  bool end_map() { --depth; return true; }
  bool start_array(uint32_t) { return ++depth <= kMaxDepth; }
  bool end_array() { --depth; return true; }
  bool start_map_key() {
    if (depth == 1) in_key = true, key_is_id = false;
    return true;
  }
  bool end_map_key() {
    if (depth == 1) in_key = false;
    return true;
  }
  bool start_map_value() {
    if (depth == 1) in_value = true;
    return true;
  }
  bool end_map_value() {
    if (depth == 1) in_value = key_is_id = false;
    return !found;  // stop reading once the id is known
  }
  bool visit_str(const char *v, uint32_t size) {
    if (depth == 1 && in_key) key_is_id = std::string_view(v, size) == "id";
    return true;
  }
  bool visit_positive_integer(uint64_t v) {
    if (depth == 1 && in_value && key_is_id) found = true, id = v;
    return true;
  }
  // msgpack's signed encodings (int 8..64) come here whatever their sign; the decoder reads a
  // non-negative one as a positive integer, so the scanner must too.
  bool visit_negative_integer(int64_t v) {
    if (v >= 0) return visit_positive_integer(static_cast<uint64_t>(v));
    return true;
  }
};

}  // namespace

uint64_t scan_request_id(const void *data, size_t size) {
  if (data == nullptr || size == 0) return 0;
  IdScanner scanner;
  try {
    size_t offset = 0;
    msgpack::parse(static_cast<const char *>(data), size, offset, scanner);
  } catch (const std::exception &) {
    // Malformed past the id, or no id: what was found stands.
  }
  return scanner.found ? scanner.id : 0;
}

}  // namespace loraflip::ipc::msg
