#include "daemon/handlers.hpp"

#include <charconv>
#include <cmath>
#include <cstring>

#include "ipc/dtype.hpp"
#include "ipc/proc.hpp"

namespace loraflip::daemon {

using ipc::Encoder;
using ipc::MapView;

namespace {

// Unwraps a Result inside a handler, or returns the error reply.
#define LF_TRY(var, expr)                               \
  auto var##_result = (expr);                           \
  if (!var##_result) return error_reply(id, var##_result.error()); \
  auto var = std::move(var##_result).value()

const char *slot_state_name(ipc::SlotState s) {
  switch (s) {
    case ipc::SlotState::kFree: return "free";
    case ipc::SlotState::kWriting: return "writing";
    case ipc::SlotState::kCommitted: return "committed";
    case ipc::SlotState::kAbandoned: return "abandoned";
  }
  return "unknown";
}

// A name for an error message: names are checked after parsing, so one may still be as long
// as a string can be, and a reply must stay within the decoding limits of the client.
std::string shown(std::string_view name) {
  return name.size() <= 128 ? std::string(name) : std::string(name.substr(0, 128)) + "...";
}

// "host", or "cuda:0" / "cuda:0,1" (device ordinals; the first is written to, the others get
// copies before each flip). "device:" is accepted as a synonym of "cuda:".
Result<std::vector<int>> parse_placement(std::string_view placement) {
  if (placement == "host") return std::vector<int>{};
  std::string_view list;
  for (std::string_view prefix : {"cuda:", "device:"})
    if (placement.substr(0, prefix.size()) == prefix) list = placement.substr(prefix.size());
  std::vector<int> ordinals;
  while (!list.empty() && ordinals.size() <= ipc::kMaxDevices) {
    const size_t comma = list.find(',');
    const std::string_view item = list.substr(0, comma);
    int value = 0;
    auto [end, ec] = std::from_chars(item.data(), item.data() + item.size(), value);
    if (ec != std::errc() || end != item.data() + item.size() || value < 0) {
      ordinals.clear();
      break;
    }
    ordinals.push_back(value);
    if (comma == std::string_view::npos) break;
    list.remove_prefix(comma + 1);
  }
  if (ordinals.empty() || ordinals.size() > ipc::kMaxDevices)
    return make_error(LF_E_INVALID_ARGUMENT,
                      "placement must be \"host\" or \"cuda:N[,N...]\" (at most " +
                          std::to_string(ipc::kMaxDevices) + " devices), not '" +
                          std::string(placement.substr(0, 32)) + "'");
  return ordinals;
}

Result<std::vector<ipc::TensorSpec>> parse_tensors(const MapView &args) {
  auto items = args.array("tensors");
  if (!items) return items.error();
  std::vector<ipc::TensorSpec> tensors;
  tensors.reserve(items->size());
  for (const msgpack::object *item : items.value()) {
    auto t = MapView::of(*item, "tensors[]");
    if (!t) return t.error();
    ipc::TensorSpec spec;
    auto name = t->str("name");
    if (!name) return name.error();
    spec.name = std::string(name.value());
    const msgpack::object *dtype = t->find("dtype");
    if (dtype != nullptr && dtype->type == msgpack::type::STR) {
      spec.dtype = ipc::dtype_from_name({dtype->via.str.ptr, dtype->via.str.size});
    } else {
      auto code = t->integer("dtype");
      if (!code) return code.error();
      spec.dtype = static_cast<int32_t>(std::clamp<int64_t>(code.value(), -1, 1 << 16));
    }
    if (ipc::dtype_size(spec.dtype) == 0)
      return make_error(LF_E_INVALID_ARGUMENT,
                        "tensor '" + shown(spec.name) + "' has an unknown dtype");
    auto dims = t->array("shape");
    if (!dims) return dims.error();
    if (dims->size() > ipc::kMaxDims)
      return make_error(LF_E_TOO_LARGE, "tensor '" + shown(spec.name) + "' has more than " +
                                            std::to_string(ipc::kMaxDims) + " dimensions");
    for (const msgpack::object *d : dims.value()) {
      auto v = ipc::as_int(*d, "shape[]");
      if (!v) return v.error();
      spec.shape.push_back(v.value());
    }
    tensors.push_back(std::move(spec));
  }
  return tensors;
}

// Target modules arrive as an array of strings (PEFT's form) or one comma-separated string.
Result<std::string> parse_target_modules(const MapView &lora) {
  const msgpack::object *o = lora.find("target_modules");
  if (o == nullptr || o->type == msgpack::type::NIL) return std::string();
  if (o->type == msgpack::type::STR) return std::string(o->via.str.ptr, o->via.str.size);
  auto items = lora.array("target_modules");
  if (!items) return items.error();
  std::string joined;
  for (const msgpack::object *item : items.value()) {
    auto s = ipc::as_str(*item, "target_modules[]");
    if (!s) return s.error();
    if (s->find(',') != std::string_view::npos)
      return make_error(LF_E_INVALID_ARGUMENT, "a target module name holds a comma");
    if (!joined.empty()) joined += ',';
    joined += s.value();
  }
  return joined;
}

std::string placement_name(const ipc::AdapterRecord &r, const DeviceSet &devices) {
  if (r.placement != static_cast<uint32_t>(ipc::Placement::kDevices)) return "host";
  if (r.device_epoch != devices.epoch()) return "lost";
  // The device written to first, then the replicas, as create_adapter took them.
  std::string name = "cuda:" + std::to_string(devices.ordinal(r.primary_device));
  for (size_t d = 0; d < devices.size(); ++d)
    if (d != r.primary_device && (r.device_mask & (1u << d)))
      name += "," + std::to_string(devices.ordinal(d));
  return name;
}

void encode_target_modules(Encoder &e, const char *joined) {
  std::vector<std::string_view> parts;
  std::string_view rest(joined);
  while (!rest.empty()) {
    const size_t comma = rest.find(',');
    parts.push_back(rest.substr(0, comma));
    if (comma == std::string_view::npos) break;
    rest.remove_prefix(comma + 1);
  }
  e.array(static_cast<uint32_t>(parts.size()));
  for (std::string_view p : parts) e.str(p);
}

}  // namespace

std::string RequestHandler::handle(std::string_view request, uint64_t now_ns,
                                   std::vector<FlipEvent> *events, bool *deferred) {
  bool deferred_here = false;
  if (deferred == nullptr) deferred = &deferred_here;
  *deferred = false;
  uint64_t id = 0;
  std::string reply;
  try {
    auto decoded = ipc::decode(request.data(), request.size());
    if (!decoded) {
      reply = error_reply(0, decoded.error());
    } else {
      const msgpack::object &root = decoded->get();
      auto envelope = MapView::of(root, "request");
      if (!envelope) {
        reply = error_reply(0, envelope.error());
      } else {
        auto id_field = envelope->uint_or("id", 0);
        id = id_field ? id_field.value() : 0;
        auto op = envelope->str("op");
        const msgpack::object *args_object = envelope->find("args");
        static const msgpack::object kEmptyMap = [] {
          msgpack::object o;
          o.type = msgpack::type::MAP;
          o.via.map.size = 0;
          o.via.map.ptr = nullptr;
          return o;
        }();
        auto args = MapView::of(
            args_object == nullptr || args_object->type == msgpack::type::NIL ? kEmptyMap
                                                                              : *args_object,
            "args");
        if (!id_field) reply = error_reply(0, id_field.error());
        else if (!op) reply = error_reply(id, op.error());
        else if (!args) reply = error_reply(id, args.error());
        else reply = dispatch(op.value(), args.value(), id, now_ns, events, deferred);
      }
    }
  } catch (const std::exception &e) {
    // Every path above returns errors as values; this is the last guard of the event loop.
    reply = error_reply(id, make_error(LF_E_INTERNAL, std::string("internal error: ") + e.what()));
  }
  if (!*deferred) ++requests_;
  return reply;
}

std::string RequestHandler::refuse(std::string_view request, const Error &error) {
  uint64_t id = 0;
  try {
    if (auto decoded = ipc::decode(request.data(), request.size())) {
      if (auto envelope = MapView::of(decoded->get(), "request")) {
        if (auto id_field = envelope->uint_or("id", 0)) id = id_field.value();
      }
    }
  } catch (const std::exception &) {
    // No id to be had: the reply goes out with id 0.
  }
  ++requests_;
  return error_reply(id, error);
}

std::string RequestHandler::error_reply(uint64_t id, const Error &error) {
  ++errors_;
  return ipc::encode_error(id, error);
}

std::string RequestHandler::dispatch(std::string_view op, const MapView &args, uint64_t id,
                                     uint64_t now_ns, std::vector<FlipEvent> *events,
                                     bool *deferred) {
  auto flip_reply = [&](Result<FlipEvent> flip, bool with_checksum) {
    if (!flip) return error_reply(id, flip.error());
    Encoder e;
    e.map(with_checksum ? 3 : 2).key("version").u64(flip->version).key("previous").u64(flip->previous);
    if (with_checksum) e.key("checksum").u64(flip->checksum);
    ++events_published_;
    events->push_back(std::move(flip).value());
    return ipc::encode_ok(id, e.take());
  };
  const auto ok_empty = [id] {
    Encoder e;
    e.map(0);
    return ipc::encode_ok(id, e.take());
  };

  if (op == "hello") return hello(args, id);
  if (op == "create_adapter") return create(args, id);
  if (op == "list") return list(id);
  if (op == "info") return info(args, id);
  if (op == "stats") return stats(id);
  if (op == "drop_adapter") {
    LF_TRY(name, args.str("name"));
    return flip_reply(registry_.drop(std::string(name)), false);
  }
  if (op == "begin_write") {
    LF_TRY(name, args.str("name"));
    LF_TRY(lease_ms, args.uint_or("lease_ms", 30000));
    LF_TRY(pid, args.uint("pid"));
    LF_TRY(start, args.uint_or("start", 0));
    LF_TRY(lease, registry_.begin_write({std::string(name), lease_ms, pid, start}, now_ns));
    Encoder e;
    e.map(6)
        .key("lease").u64(lease.id)
        .key("adapter").u64(lease.adapter)
        .key("incarnation").u64(lease.incarnation)
        .key("slot").u64(lease.slot)
        .key("data_offset").u64(lease.data_offset)
        .key("slot_bytes").u64(lease.slot_bytes);
    return ipc::encode_ok(id, e.take());
  }
  if (op == "commit") {
    LF_TRY(lease, args.uint("lease"));
    LF_TRY(flags, args.uint_or("flags", 0));
    CommitRequest q{lease, static_cast<uint32_t>(flags), std::nullopt, std::nullopt};
    if (flags > UINT32_MAX) q.flags = UINT32_MAX;  // rejected as unknown flags
    if (const msgpack::object *c = args.find("checksum"); c && c->type != msgpack::type::NIL) {
      LF_TRY(sum, ipc::as_uint(*c, "checksum"));
      q.checksum = sum;
    }
    if (const msgpack::object *ev = args.find("event"); ev && ev->type != msgpack::type::NIL) {
      if (ev->type != msgpack::type::BIN || ev->via.bin.size != sizeof(device::IpcHandle::bytes))
        return error_reply(id, make_error(LF_E_PROTOCOL, "'event' must be 64 bytes of binary"));
      device::IpcHandle handle;
      std::memcpy(handle.bytes, ev->via.bin.ptr, sizeof handle.bytes);
      q.event = handle;
    }
    LF_TRY(done, registry_.copies_done(q, now_ns));
    if (!done) {
      *deferred = true;  // the writer's copies are still running: the server asks again
      return {};
    }
    return flip_reply(registry_.commit(q, now_ns), true);
  }
  if (op == "abort") {
    LF_TRY(lease, args.uint("lease"));
    if (Status s = registry_.abort(lease); !s) return error_reply(id, s.error());
    return ok_empty();
  }
  if (op == "rollback") {
    LF_TRY(name, args.str("name"));
    LF_TRY(version, args.uint("version"));
    return flip_reply(registry_.rollback(std::string(name), version), true);
  }
  return error_reply(id, make_error(LF_E_UNKNOWN_OP, "unknown op '" +
                                                               std::string(op.substr(0, 64)) + "'"));
}

std::string RequestHandler::hello(const MapView &args, uint64_t id) {
  LF_TRY(protocol, args.uint("protocol"));
  if (protocol != ipc::kProtocolVersion)
    return error_reply(
        id, make_error(LF_E_PROTOCOL_VERSION,
                       "the client speaks protocol " + std::to_string(protocol) +
                           ", this daemon speaks " + std::to_string(ipc::kProtocolVersion)));
  const ipc::Arena &arena = registry_.arena();
  Encoder e;
  e.map(8)
      .key("protocol").u64(ipc::kProtocolVersion)
      .key("version").str(identity_.version)
      .key("instance").str(identity_.instance)
      .key("control_segment").str(arena.control().name())
      .key("data_segment").str(arena.data().name())
      .key("data_bytes").u64(arena.data_bytes())
      .key("max_readers").u64(arena.max_readers())
      .key("max_adapters").u64(arena.max_adapters());
  return ipc::encode_ok(id, e.take());
}

std::string RequestHandler::create(const MapView &args, uint64_t id) {
  CreateRequest q;
  LF_TRY(name, args.str("name"));
  q.name = std::string(name);
  LF_TRY(tensors, parse_tensors(args));
  q.tensors = std::move(tensors);
  if (const msgpack::object *lora_object = args.find("lora");
      lora_object != nullptr && lora_object->type != msgpack::type::NIL) {
    LF_TRY(lora, MapView::of(*lora_object, "lora"));
    LF_TRY(rank, lora.uint_or("rank", 0));
    LF_TRY(alpha, lora.number_or("alpha", static_cast<double>(rank)));
    LF_TRY(rslora, lora.boolean_or("use_rslora", false));
    LF_TRY(targets, parse_target_modules(lora));
    if (rank > 65536) return error_reply(id, make_error(LF_E_INVALID_ARGUMENT, "LoRA rank is over 65536"));
    if (!std::isfinite(alpha))
      return error_reply(id, make_error(LF_E_INVALID_ARGUMENT, "LoRA alpha is not finite"));
    q.rank = static_cast<uint32_t>(rank);
    q.alpha = alpha;
    q.use_rslora = rslora;
    q.target_modules = std::move(targets);
  }
  LF_TRY(metadata, args.str_or("metadata", ""));
  q.metadata = std::string(metadata);
  LF_TRY(slots, args.uint_or("slots", 0));
  LF_TRY(history, args.integer_or("history", -1));
  if (slots > ipc::kMaxSlots || history > static_cast<int64_t>(ipc::kMaxSlots) || history < -1)
    return error_reply(id, make_error(LF_E_INVALID_ARGUMENT, "slots must be 0..64 and history -1..62"));
  q.slots = static_cast<uint32_t>(slots);
  q.history = static_cast<int32_t>(history);
  LF_TRY(placement, args.str_or("placement", "host"));
  LF_TRY(devices, parse_placement(placement));
  q.devices = std::move(devices);
  if (Status s = registry_.create(q); !s) return error_reply(id, s.error());
  const ipc::AdapterRecord &r = registry_.arena().adapter(*registry_.find(q.name));
  Encoder e;
  e.map(4)
      .key("name").str(q.name)
      .key("slot_bytes").u64(r.slot_bytes)
      .key("slots").u64(r.slot_count)
      .key("history").u64(r.history_depth);
  return ipc::encode_ok(id, e.take());
}

std::string RequestHandler::list(uint64_t id) {
  const std::vector<uint32_t> live = registry_.live_adapters();
  Encoder e;
  e.map(1).key("adapters").array(static_cast<uint32_t>(live.size()));
  for (uint32_t index : live) {
    const ipc::AdapterRecord &r = registry_.arena().adapter(index);
    e.map(6)
        .key("name").str(r.name)
        .key("version").u64(ipc::active_version(r.active.load()))
        .key("tensors").u64(r.tensor_count)
        .key("slot_bytes").u64(r.slot_bytes)
        .key("slots").u64(r.slot_count)
        .key("history").u64(r.history_depth);
  }
  return ipc::encode_ok(id, e.take());
}

std::string RequestHandler::info(const MapView &args, uint64_t id) {
  LF_TRY(name, args.str("name"));
  std::optional<uint32_t> index = registry_.find(name);
  if (!index)
    return error_reply(id, make_error(LF_E_NOT_FOUND, "no adapter '" +
                                                                std::string(name.substr(0, 128)) + "'"));
  const ipc::Arena &arena = registry_.arena();
  const ipc::AdapterRecord &r = arena.adapter(*index);
  const uint64_t active = r.active.load();
  const SlotCensus census = registry_.census(*index);
  Encoder e;
  e.map(15)  // name .. tensors below: keep in step with the keys
      .key("name").str(r.name)
      .key("index").u64(*index)
      .key("incarnation").u64(r.incarnation.load())
      .key("version").u64(ipc::active_version(active))
      .key("last_version").u64(r.last_version)
      .key("slot_bytes").u64(r.slot_bytes)
      .key("history").u64(r.history_depth)
      .key("placement").str(placement_name(r, registry_.devices()));
  e.key("lora").map(4)
      .key("rank").u64(r.lora.rank)
      .key("alpha").f64(r.lora.alpha)
      .key("use_rslora").boolean(r.lora.use_rslora != 0)
      .key("target_modules");
  encode_target_modules(e, arena.pool_string(r.lora.target_modules_offset));
  e.key("metadata").str(arena.pool_string(r.lora.metadata_offset));
  e.key("counters").map(7)
      .key("commits").u64(r.commits.load())
      .key("aborts").u64(r.aborts.load())
      .key("rollbacks").u64(r.rollbacks.load())
      .key("write_ns_total").u64(r.write_ns_total.load())
      .key("check_ns_total").u64(r.check_ns_total.load())
      .key("event_waits").u64(r.event_waits.load())
      .key("event_wait_ns_total").u64(r.event_wait_ns_total.load());
  // Device placements: the host copy a restarted daemon would serve from (bytes 0: none).
  e.key("restart_copy").map(2)
      .key("bytes").u64(r.restart_copy_bytes)
      .key("version").u64(r.restart_copy_version);
  e.key("census").map(5)
      .key("free").u64(census.free).key("writing").u64(census.writing)
      .key("committed").u64(census.committed).key("abandoned").u64(census.abandoned)
      .key("pinned").u64(census.pinned);
  e.key("slots").array(r.slot_count);
  for (uint32_t s = 0; s < r.slot_count; ++s) {
    const ipc::SlotRecord &slot = r.slots[s];
    const uint64_t w = slot.word.load();
    e.map(5)
        .key("state").str(slot_state_name(ipc::slot_word_state(w)))
        .key("version").u64(ipc::slot_word_version(w))
        .key("active").boolean(active != 0 && ipc::active_slot(active) == s)
        .key("checksum").u64(slot.checksum)
        .key("committed_unix_ns").u64(slot.committed_unix_ns);
  }
  const ipc::TensorDesc *descs = arena.tensors(r);
  e.key("tensors").array(r.tensor_count);
  for (uint32_t t = 0; t < r.tensor_count; ++t) {
    const ipc::TensorDesc &d = descs[t];
    e.map(5).key("name").str(d.name).key("dtype").str(ipc::dtype_name(d.dtype)).key("shape");
    e.array(static_cast<uint32_t>(d.ndim));
    for (int32_t k = 0; k < d.ndim; ++k) e.i64(d.shape[k]);
    e.key("offset").u64(d.offset).key("nbytes").u64(d.nbytes);
  }
  return ipc::encode_ok(id, e.take());
}

std::string RequestHandler::stats(uint64_t id) {
  const ipc::Arena &arena = registry_.arena();
  const ReapReport &reclaimed = registry_.reclaimed_total();
  Encoder e;
  e.map(15)
      .key("instance").str(identity_.instance)
      .key("uptime_s").f64(static_cast<double>(ipc::unix_now_ns() - identity_.started_unix_ns) / 1e9)
      .key("adapters").u64(registry_.live_adapters().size())
      .key("max_adapters").u64(arena.max_adapters())
      .key("readers").u64(registry_.live_readers())
      .key("max_readers").u64(arena.max_readers())
      .key("pins").u64(registry_.pins_held())
      .key("oldest_pin_age_s").f64(static_cast<double>(registry_.oldest_pin_age_ns(ipc::monotonic_now_ns())) / 1e9)
      .key("flips").u64(arena.header().flips.load())
      .key("requests").u64(requests_)
      .key("errors").u64(errors_)
      .key("data_bytes").u64(registry_.data_allocator().size())
      .key("data_used").u64(registry_.data_allocator().used())
      .key("events").u64(events_published_);
  e.key("reclaimed").map(5)
      .key("dead_readers").u64(reclaimed.dead_readers)
      .key("pins_cleared").u64(reclaimed.pins_cleared)
      .key("dead_writers").u64(reclaimed.dead_writers)
      .key("expired_leases").u64(reclaimed.expired_leases)
      .key("adapters_freed").u64(reclaimed.adapters_freed);
  return ipc::encode_ok(id, e.take());
}

}  // namespace loraflip::daemon
