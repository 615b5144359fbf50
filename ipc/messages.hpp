// Every control message, declared once: one struct per request and per reply, each with a table
// of its fields (key, member, required or optional). One generic encoder and one generic decoder
// read those tables, so the daemon, the C client, the tests and the fuzz corpus generator all
// speak the same messages, map sizes are never counted by hand, and every check of what crosses
// the socket lives in one place:
//   - the message limits of ipc::decode (size, nesting, array, map, string lengths);
//   - every string is valid UTF-8 without NUL bytes (names, metadata, modules, placement, op);
//   - every field has the declared type; required fields are present; unknown fields and
//     fields given twice are refused (a request never carries what the daemon would ignore).
// The model is systemd's JSON dispatch tables: one declaration that both checks and fills.
//
// docs/protocol.md describes the same messages for people; keep the two in step.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#include <msgpack.hpp>

#include "ipc/layout.hpp"
#include "ipc/protocol.hpp"
#include "ipc/result.hpp"

namespace loraflip::ipc::msg {

// ---------------------------------------------------------------------------------------------
// The schema machinery.

enum class Presence { kRequired, kOptional };

template <class S, class T>
struct Field {
  std::string_view key;
  T S::*member;
  Presence presence;
};

// A field that must be present (and not nil).
template <class S, class T>
constexpr Field<S, T> required(std::string_view key, T S::*member) {
  return {key, member, Presence::kRequired};
}
// A field that may be absent or nil: the member keeps its default. A std::optional member is
// left out of the encoded map when empty.
template <class S, class T>
constexpr Field<S, T> optional(std::string_view key, T S::*member) {
  return {key, member, Presence::kOptional};
}

// Where a value sits in a message, for error messages ("args.tensors[3].shape[1]"); built on
// the stack, rendered only when something is wrong.
struct Path {
  const Path *parent = nullptr;
  std::string_view key;
  int64_t index = -1;  // >= 0: an array item of the parent
  std::string str() const;
};

// A message struct: one that declares its fields.
template <class S>
concept Message = requires { S::fields(); };

// Leaf types with their own wire form.
struct Binary64 {  // 64 bytes of msgpack binary (an interprocess event handle)
  std::array<unsigned char, 64> bytes{};
};
struct DType {  // a dtype name ("bf16") on the wire; its LF_DTYPE_* number (or the name) read
  int32_t code = 0;
};
struct ModuleList {  // PEFT's target modules: an array of names (or one comma-separated string)
  std::vector<std::string> names;
  // "q_proj,v_proj" -> {"q_proj", "v_proj"}; "" -> {} (the form the C API and the arena keep).
  static ModuleList split(std::string_view joined);
};
struct RawMap {  // a map taken as it is (the envelope's args, decoded by the op's schema)
  const msgpack::object *object = nullptr;
};

Status read_value(const msgpack::object &o, uint64_t &v, const Path &p);
Status read_value(const msgpack::object &o, uint32_t &v, const Path &p);
Status read_value(const msgpack::object &o, int64_t &v, const Path &p);
Status read_value(const msgpack::object &o, double &v, const Path &p);
Status read_value(const msgpack::object &o, bool &v, const Path &p);
Status read_value(const msgpack::object &o, std::string &v, const Path &p);
Status read_value(const msgpack::object &o, Binary64 &v, const Path &p);
Status read_value(const msgpack::object &o, DType &v, const Path &p);
Status read_value(const msgpack::object &o, ModuleList &v, const Path &p);
Status read_value(const msgpack::object &o, RawMap &v, const Path &p);

void write_value(Encoder &e, uint64_t v);
void write_value(Encoder &e, uint32_t v);
void write_value(Encoder &e, int64_t v);
void write_value(Encoder &e, double v);
void write_value(Encoder &e, bool v);
void write_value(Encoder &e, const std::string &v);
void write_value(Encoder &e, const Binary64 &v);
void write_value(Encoder &e, const DType &v);
void write_value(Encoder &e, const ModuleList &v);

template <Message S>
Status read_value(const msgpack::object &o, S &v, const Path &p);
template <Message S>
void write_value(Encoder &e, const S &v);

template <class T>
Status read_value(const msgpack::object &o, std::vector<T> &v, const Path &p) {
  if (o.type != msgpack::type::ARRAY)
    return make_error(LF_E_PROTOCOL, "'" + p.str() + "' must be an array");
  v.clear();
  v.resize(o.via.array.size);
  for (uint32_t i = 0; i < o.via.array.size; ++i) {
    const Path item{&p, {}, i};
    if (Status s = read_value(o.via.array.ptr[i], v[i], item); !s) return s;
  }
  return {};
}
template <class T>
void write_value(Encoder &e, const std::vector<T> &v) {
  e.array(static_cast<uint32_t>(v.size()));
  for (const T &item : v) write_value(e, item);
}

template <class T>
Status read_value(const msgpack::object &o, std::optional<T> &v, const Path &p) {
  if (o.type == msgpack::type::NIL) {
    v.reset();
    return {};
  }
  v.emplace();
  return read_value(o, *v, p);
}

namespace detail {

template <class Tuple, class F, size_t... I>
void for_each_field(const Tuple &t, F &&f, std::index_sequence<I...>) {
  (f(std::get<I>(t), I), ...);
}
template <class Tuple, class F>
void for_each_field(const Tuple &t, F &&f) {
  for_each_field(t, std::forward<F>(f), std::make_index_sequence<std::tuple_size_v<Tuple>>{});
}

template <class T> struct is_optional : std::false_type {};
template <class T> struct is_optional<std::optional<T>> : std::true_type {};

// A map key for an error message: printable ASCII as it is, anything else escaped.
std::string shown_key(std::string_view key);

}  // namespace detail

template <Message S>
Status read_value(const msgpack::object &o, S &out, const Path &path) {
  if (o.type != msgpack::type::MAP)
    return make_error(LF_E_PROTOCOL, "'" + path.str() + "' must be a map");
  constexpr auto fields = S::fields();
  constexpr size_t count = std::tuple_size_v<decltype(fields)>;
  static_assert(count <= 64, "a message has at most 64 fields");
  uint64_t seen = 0;
  for (uint32_t i = 0; i < o.via.map.size; ++i) {
    const msgpack::object_kv &kv = o.via.map.ptr[i];
    if (kv.key.type != msgpack::type::STR)
      return make_error(LF_E_PROTOCOL, "'" + path.str() + "' has a key that is not a string");
    const std::string_view key(kv.key.via.str.ptr, kv.key.via.str.size);
    Status status;
    bool matched = false;
    detail::for_each_field(fields, [&](const auto &field, size_t index) {
      if (matched || field.key != key) return;
      matched = true;
      const Path here{&path, field.key};
      if (seen & (uint64_t{1} << index)) {
        status = make_error(LF_E_PROTOCOL, "'" + here.str() + "' is given twice");
        return;
      }
      seen |= uint64_t{1} << index;
      // nil stands for "absent" in an optional field.
      if (field.presence == Presence::kOptional && kv.val.type == msgpack::type::NIL) return;
      status = read_value(kv.val, out.*(field.member), here);
    });
    if (!matched)
      return make_error(LF_E_PROTOCOL, "unknown field '" + detail::shown_key(key) + "' in '" +
                                           path.str() + "'");
    if (!status) return status;
  }
  Status missing;
  detail::for_each_field(fields, [&](const auto &field, size_t index) {
    if (missing && field.presence == Presence::kRequired && !(seen & (uint64_t{1} << index))) {
      const Path here{&path, field.key};
      missing = make_error(LF_E_PROTOCOL, "missing field '" + here.str() + "'");
    }
  });
  return missing;
}

template <Message S>
void write_value(Encoder &e, const S &v) {
  constexpr auto fields = S::fields();
  uint32_t present = 0;
  detail::for_each_field(fields, [&](const auto &field, size_t) {
    using T = std::remove_cvref_t<decltype(v.*(field.member))>;
    if constexpr (detail::is_optional<T>::value) present += (v.*(field.member)).has_value();
    else ++present;
  });
  e.map(present);
  detail::for_each_field(fields, [&](const auto &field, size_t) {
    const auto &value = v.*(field.member);
    using T = std::remove_cvref_t<decltype(value)>;
    if constexpr (detail::is_optional<T>::value) {
      if (!value) return;
      e.key(field.key);
      write_value(e, *value);
    } else {
      e.key(field.key);
      write_value(e, value);
    }
  });
}

// Decodes a message struct from a map (an op's args, a reply's result).
template <Message S>
Result<S> decode_map(const msgpack::object &o, std::string_view what) {
  S s{};
  const Path root{nullptr, what};
  if (Status st = read_value(o, s, root); !st) return st.error();
  return s;
}

template <Message S>
std::string encode_map(const S &s) {
  Encoder e;
  write_value(e, s);
  return e.take();
}

// ---------------------------------------------------------------------------------------------
// The envelope: {op, id, args}. `args` may be absent or nil (an empty map).

struct Envelope {
  std::string op;
  uint64_t id = 0;
  RawMap args;
  static constexpr auto fields() {
    return std::tuple{required("op", &Envelope::op), optional("id", &Envelope::id),
                      optional("args", &Envelope::args)};
  }
  // The request's arguments: an empty map where it sent none, so that every op's decoder
  // reads a map.
  const msgpack::object &args_or_empty() const {
    static const msgpack::object kEmptyMap = [] {
      msgpack::object o;
      o.type = msgpack::type::MAP;
      o.via.map.size = 0;
      o.via.map.ptr = nullptr;
      return o;
    }();
    return args.object != nullptr ? *args.object : kEmptyMap;
  }
};

// The request id of a message that may not decode at all (over a limit, malformed after the
// id): read from the top-level map's "id" without building the message, so that every error
// reply carries the id whenever the bytes let it be read. 0 when there is none.
uint64_t scan_request_id(const void *data, size_t size);

// A whole request as a client sends it: the op name comes from the args' type.
template <Message S>
std::string encode_request(uint64_t id, const S &args) {
  return ipc::encode_request(S::kOp, id, encode_map(args));
}

// An ok reply around a result struct.
template <Message S>
std::string encode_result(uint64_t id, const S &result) {
  return ipc::encode_ok(id, encode_map(result));
}

// ---------------------------------------------------------------------------------------------
// Requests (args) and their results. Who sends a request is never part of it: the daemon takes
// the sender's process from the kernel (SO_PEERCRED), so no request names a pid.

struct Empty {
  static constexpr auto fields() { return std::tuple{}; }
};

struct Hello {
  static constexpr std::string_view kOp = "hello";
  uint64_t protocol = 0;
  static constexpr auto fields() { return std::tuple{required("protocol", &Hello::protocol)}; }
};
struct HelloResult {
  uint64_t protocol = 0;
  std::string version, instance, control_segment, data_segment;
  uint64_t data_bytes = 0, max_readers = 0, max_adapters = 0;
  static constexpr auto fields() {
    using R = HelloResult;
    return std::tuple{required("protocol", &R::protocol), required("version", &R::version),
                      required("instance", &R::instance),
                      required("control_segment", &R::control_segment),
                      required("data_segment", &R::data_segment),
                      required("data_bytes", &R::data_bytes),
                      required("max_readers", &R::max_readers),
                      required("max_adapters", &R::max_adapters)};
  }
};

struct TensorArg {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  static constexpr auto fields() {
    return std::tuple{required("name", &TensorArg::name), required("dtype", &TensorArg::dtype),
                      required("shape", &TensorArg::shape)};
  }
};

struct LoraArg {
  uint64_t rank = 0;
  std::optional<double> alpha;  // absent: the rank (scale 1)
  bool use_rslora = false;
  ModuleList target_modules;
  static constexpr auto fields() {
    return std::tuple{optional("rank", &LoraArg::rank), optional("alpha", &LoraArg::alpha),
                      optional("use_rslora", &LoraArg::use_rslora),
                      optional("target_modules", &LoraArg::target_modules)};
  }
};

struct CreateAdapter {
  static constexpr std::string_view kOp = "create_adapter";
  std::string name;
  std::vector<TensorArg> tensors;
  std::optional<LoraArg> lora;
  std::string metadata;
  uint64_t slots = 0;     // 0: history + 2
  int64_t history = -1;   // -1: the daemon's default
  std::string placement = "host";
  static constexpr auto fields() {
    using R = CreateAdapter;
    return std::tuple{required("name", &R::name), required("tensors", &R::tensors),
                      optional("lora", &R::lora), optional("metadata", &R::metadata),
                      optional("slots", &R::slots), optional("history", &R::history),
                      optional("placement", &R::placement)};
  }
};
struct CreateResult {
  std::string name;
  uint64_t slot_bytes = 0, slots = 0, history = 0;
  static constexpr auto fields() {
    using R = CreateResult;
    return std::tuple{required("name", &R::name), required("slot_bytes", &R::slot_bytes),
                      required("slots", &R::slots), required("history", &R::history)};
  }
};

struct DropAdapter {
  static constexpr std::string_view kOp = "drop_adapter";
  std::string name;
  static constexpr auto fields() { return std::tuple{required("name", &DropAdapter::name)}; }
};

// The result of every flip: commit, rollback, drop.
struct FlipResult {
  uint64_t version = 0;
  uint64_t previous = 0;
  std::optional<uint64_t> checksum;  // commit and rollback
  // A commit asked again for a lease that was already committed: the version it made, and
  // nothing flipped now (previous is then 0).
  std::optional<bool> repeated;
  static constexpr auto fields() {
    using R = FlipResult;
    return std::tuple{required("version", &R::version), required("previous", &R::previous),
                      optional("checksum", &R::checksum), optional("repeated", &R::repeated)};
  }
};

struct List {
  static constexpr std::string_view kOp = "list";
  static constexpr auto fields() { return std::tuple{}; }
};
struct ListEntry {
  std::string name;
  uint64_t version = 0, tensors = 0, slot_bytes = 0, slots = 0, history = 0;
  static constexpr auto fields() {
    using R = ListEntry;
    return std::tuple{required("name", &R::name), required("version", &R::version),
                      required("tensors", &R::tensors), required("slot_bytes", &R::slot_bytes),
                      required("slots", &R::slots), required("history", &R::history)};
  }
};
struct ListResult {
  std::vector<ListEntry> adapters;
  static constexpr auto fields() { return std::tuple{required("adapters", &ListResult::adapters)}; }
};

struct Info {
  static constexpr std::string_view kOp = "info";
  std::string name;
  static constexpr auto fields() { return std::tuple{required("name", &Info::name)}; }
};
struct InfoLora {
  uint64_t rank = 0;
  double alpha = 0;
  bool use_rslora = false;
  ModuleList target_modules;
  static constexpr auto fields() {
    using R = InfoLora;
    return std::tuple{required("rank", &R::rank), required("alpha", &R::alpha),
                      required("use_rslora", &R::use_rslora),
                      required("target_modules", &R::target_modules)};
  }
};
struct InfoCounters {
  uint64_t commits = 0, aborts = 0, rollbacks = 0;
  uint64_t write_ns_total = 0;       // begin_write to the first commit request
  uint64_t check_ns_total = 0;       // checks and replication
  uint64_t event_waits = 0;          // commits that handed over a device event
  uint64_t event_wait_ns_total = 0;  // commit request to the event's completion
  static constexpr auto fields() {
    using R = InfoCounters;
    return std::tuple{required("commits", &R::commits), required("aborts", &R::aborts),
                      required("rollbacks", &R::rollbacks),
                      required("write_ns_total", &R::write_ns_total),
                      required("check_ns_total", &R::check_ns_total),
                      required("event_waits", &R::event_waits),
                      required("event_wait_ns_total", &R::event_wait_ns_total)};
  }
};
struct InfoRestartCopy {  // device placements: the host copy a restarted daemon serves from
  uint64_t bytes = 0, version = 0;
  static constexpr auto fields() {
    return std::tuple{required("bytes", &InfoRestartCopy::bytes),
                      required("version", &InfoRestartCopy::version)};
  }
};
struct InfoCensus {
  uint64_t free = 0, writing = 0, committed = 0, abandoned = 0, pinned = 0;
  static constexpr auto fields() {
    using R = InfoCensus;
    return std::tuple{required("free", &R::free), required("writing", &R::writing),
                      required("committed", &R::committed), required("abandoned", &R::abandoned),
                      required("pinned", &R::pinned)};
  }
};
struct InfoSlot {
  std::string state;
  uint64_t version = 0;
  bool active = false;
  uint64_t checksum = 0;
  uint64_t committed_unix_ns = 0;
  static constexpr auto fields() {
    using R = InfoSlot;
    return std::tuple{required("state", &R::state), required("version", &R::version),
                      required("active", &R::active), required("checksum", &R::checksum),
                      required("committed_unix_ns", &R::committed_unix_ns)};
  }
};
struct InfoTensor {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  uint64_t offset = 0, nbytes = 0;
  static constexpr auto fields() {
    using R = InfoTensor;
    return std::tuple{required("name", &R::name), required("dtype", &R::dtype),
                      required("shape", &R::shape), required("offset", &R::offset),
                      required("nbytes", &R::nbytes)};
  }
};
struct InfoResult {
  std::string name;
  uint64_t index = 0, incarnation = 0, version = 0, last_version = 0, slot_bytes = 0,
           history = 0;
  std::string placement;
  InfoLora lora;
  std::string metadata;
  InfoCounters counters;
  InfoRestartCopy restart_copy;
  InfoCensus census;
  std::vector<InfoSlot> slots;
  std::vector<InfoTensor> tensors;
  static constexpr auto fields() {
    using R = InfoResult;
    return std::tuple{
        required("name", &R::name), required("index", &R::index),
        required("incarnation", &R::incarnation), required("version", &R::version),
        required("last_version", &R::last_version), required("slot_bytes", &R::slot_bytes),
        required("history", &R::history), required("placement", &R::placement),
        required("lora", &R::lora), required("metadata", &R::metadata),
        required("counters", &R::counters), required("restart_copy", &R::restart_copy),
        required("census", &R::census), required("slots", &R::slots),
        required("tensors", &R::tensors)};
  }
};

struct BeginWrite {
  static constexpr std::string_view kOp = "begin_write";
  std::string name;
  uint64_t lease_ms = 30000;
  // The writer's number for this begin (any value but 0). Asked again with the same token
  // after its reply was lost, begin_write answers the same lease rather than lend a second
  // slot that nobody would ever commit.
  std::optional<uint64_t> token;
  static constexpr auto fields() {
    return std::tuple{required("name", &BeginWrite::name),
                      optional("lease_ms", &BeginWrite::lease_ms),
                      optional("token", &BeginWrite::token)};
  }
};
struct BeginWriteResult {
  uint64_t lease = 0, adapter = 0, incarnation = 0, slot = 0, data_offset = 0, slot_bytes = 0;
  static constexpr auto fields() {
    using R = BeginWriteResult;
    return std::tuple{required("lease", &R::lease), required("adapter", &R::adapter),
                      required("incarnation", &R::incarnation), required("slot", &R::slot),
                      required("data_offset", &R::data_offset),
                      required("slot_bytes", &R::slot_bytes)};
  }
};

struct Commit {
  static constexpr std::string_view kOp = "commit";
  uint64_t lease = 0;
  uint64_t flags = 0;                // LF_COMMIT_*
  std::optional<uint64_t> checksum;  // the writer's, compared when LF_COMMIT_CHECKSUM
  std::optional<Binary64> event;     // an interprocess event the commit waits for
  // The version number this commit takes, asked by the writer (a follower mirroring another
  // node's daemon keeps the upstream's numbers, so that `policy@17` is the same bytes on every
  // node). Absent: the daemon assigns the next number. Limits: kMinExplicitVersion to
  // kMaxExplicitVersion, and above every version the adapter ever had (its last_version),
  // so versions still only grow and a reader can never mistake one for another.
  std::optional<uint64_t> version;
  static constexpr uint64_t kMinExplicitVersion = 1;
  static constexpr uint64_t kMaxExplicitVersion = ipc::kMaxVersion;  // the active word's 40 bits
  static constexpr auto fields() {
    using R = Commit;
    return std::tuple{required("lease", &R::lease), optional("flags", &R::flags),
                      optional("checksum", &R::checksum), optional("event", &R::event),
                      optional("version", &R::version)};
  }
};

struct Abort {
  static constexpr std::string_view kOp = "abort";
  uint64_t lease = 0;
  static constexpr auto fields() { return std::tuple{required("lease", &Abort::lease)}; }
};

struct Rollback {
  static constexpr std::string_view kOp = "rollback";
  std::string name;
  uint64_t version = 0;
  static constexpr auto fields() {
    return std::tuple{required("name", &Rollback::name), required("version", &Rollback::version)};
  }
};

struct Stats {
  static constexpr std::string_view kOp = "stats";
  static constexpr auto fields() { return std::tuple{}; }
};
struct StatsReclaimed {
  uint64_t dead_readers = 0, pins_cleared = 0, dead_writers = 0, expired_leases = 0,
           adapters_freed = 0;
  static constexpr auto fields() {
    using R = StatsReclaimed;
    return std::tuple{required("dead_readers", &R::dead_readers),
                      required("pins_cleared", &R::pins_cleared),
                      required("dead_writers", &R::dead_writers),
                      required("expired_leases", &R::expired_leases),
                      required("adapters_freed", &R::adapters_freed)};
  }
};
struct StatsResult {
  std::string instance;
  double uptime_s = 0;
  uint64_t adapters = 0, max_adapters = 0, readers = 0, max_readers = 0, pins = 0;
  double oldest_pin_age_s = 0;
  uint64_t flips = 0, requests = 0, errors = 0, data_bytes = 0, data_used = 0, events = 0;
  StatsReclaimed reclaimed;
  static constexpr auto fields() {
    using R = StatsResult;
    return std::tuple{
        required("instance", &R::instance), required("uptime_s", &R::uptime_s),
        required("adapters", &R::adapters), required("max_adapters", &R::max_adapters),
        required("readers", &R::readers), required("max_readers", &R::max_readers),
        required("pins", &R::pins), required("oldest_pin_age_s", &R::oldest_pin_age_s),
        required("flips", &R::flips), required("requests", &R::requests),
        required("errors", &R::errors), required("data_bytes", &R::data_bytes),
        required("data_used", &R::data_used), required("events", &R::events),
        required("reclaimed", &R::reclaimed)};
  }
};

// A reader registers through the daemon, which claims a reader-table entry for the sender's
// process as the kernel names it in the daemon's pid namespace (so a reader in a container is
// reaped like any other).
struct OpenReader {
  static constexpr std::string_view kOp = "open_reader";
  static constexpr auto fields() { return std::tuple{}; }
};
struct OpenReaderResult {
  uint64_t entry = 0;
  uint64_t owner = 0;  // the entry's owner_pid as stored: the reader clears it at close
  static constexpr auto fields() {
    return std::tuple{required("entry", &OpenReaderResult::entry),
                      required("owner", &OpenReaderResult::owner)};
  }
};

// Flip events on the events socket (topic event_topic(adapter), then this map).
struct FlipEventMessage {
  std::string adapter;
  std::string kind;  // "commit", "rollback", "drop"
  uint64_t version = 0, previous = 0, unix_ns = 0, seq = 0;
  static constexpr auto fields() {
    using R = FlipEventMessage;
    return std::tuple{required("adapter", &R::adapter), required("kind", &R::kind),
                      required("version", &R::version), required("previous", &R::previous),
                      required("unix_ns", &R::unix_ns), required("seq", &R::seq)};
  }
};

// Error replies: {id, ok: false, error: {code, message}}.
struct ErrorBody {
  int64_t code = 0;
  std::string message;
  static constexpr auto fields() {
    return std::tuple{required("code", &ErrorBody::code), required("message", &ErrorBody::message)};
  }
};

}  // namespace loraflip::ipc::msg
