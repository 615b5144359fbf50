#include "daemon/handlers.hpp"

#include <charconv>
#include <cmath>
#include <cstring>

#include "ipc/dtype.hpp"
#include "ipc/proc.hpp"
#include "ipc/text.hpp"

namespace loraflip::daemon {

namespace msg = ipc::msg;

namespace {

const char *slot_state_name(ipc::SlotState s) {
  switch (s) {
    case ipc::SlotState::kFree: return "free";
    case ipc::SlotState::kWriting: return "writing";
    case ipc::SlotState::kCommitted: return "committed";
    case ipc::SlotState::kAbandoned: return "abandoned";
  }
  return "unknown";
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
                          ipc::printable(placement, 32) + "'");
  return ordinals;
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

// The process behind a request, for the requests that act for one (leases, reader entries):
// the kernel's pid, in this daemon's pid namespace, and that process's start time as this
// daemon's /proc shows it, so a reused pid never inherits a lease or a reader entry.
Result<Requester> requester_of(const std::optional<PeerCredentials> &peer) {
  if (!peer || peer->pid == 0)
    return make_error(LF_E_PERMISSION,
                      "the daemon cannot name the sending process (no peer credentials, or the "
                      "sender lives outside the daemon's pid namespace): run loraflipd in the pid "
                      "namespace of its clients or an ancestor of it");
  const uint64_t start = ipc::process_start_time(static_cast<pid_t>(peer->pid));
  if (start == 0)
    return make_error(LF_E_PERMISSION, "process " + std::to_string(peer->pid) +
                                           " is not visible in the daemon's /proc");
  return Requester{peer->pid, start};
}

}  // namespace

std::string RequestHandler::handle(std::string_view request,
                                   const std::optional<PeerCredentials> &peer, uint64_t now_ns,
                                   std::vector<FlipEvent> *events, bool *deferred) {
  bool deferred_here = false;
  if (deferred == nullptr) deferred = &deferred_here;
  *deferred = false;
  // Read first, so that even a request that fails to decode (over a limit, malformed after its
  // id) is answered under its own id.
  const uint64_t id = msg::scan_request_id(request.data(), request.size());
  std::string reply;
  try {
    auto decoded = ipc::decode(request.data(), request.size());
    if (!decoded) {
      reply = error_reply(id, decoded.error());
    } else if (auto envelope = msg::decode_map<msg::Envelope>(decoded->get(), "request");
               !envelope) {
      reply = error_reply(id, envelope.error());
    } else {
      reply = dispatch(envelope.value(), envelope->args_or_empty(), peer, now_ns, events,
                       deferred);
    }
  } catch (const std::exception &e) {
    // Every path above returns errors as values; this is the last guard of the event loop.
    reply = error_reply(id, make_error(LF_E_INTERNAL, std::string("internal error: ") + e.what()));
  }
  if (!*deferred) ++requests_;
  return reply;
}

std::string RequestHandler::handle_frames(const std::vector<std::string_view> &frames,
                                          const std::optional<PeerCredentials> &peer,
                                          uint64_t now_ns, std::vector<FlipEvent> *events,
                                          bool *deferred) {
  if (deferred != nullptr) *deferred = false;
  if (frames.size() != 2 || !frames[0].empty())
    return refuse(frames.empty() ? std::string_view() : frames.back(),
                  make_error(LF_E_PROTOCOL, "a request is one empty delimiter frame and one body "
                                            "frame; this one had " +
                                                std::to_string(frames.size()) + " frames"));
  return handle(frames[1], peer, now_ns, events, deferred);
}

std::string RequestHandler::refuse(std::string_view request, const Error &error) {
  ++requests_;
  return error_reply(msg::scan_request_id(request.data(), request.size()), error);
}

std::string RequestHandler::error_reply(uint64_t id, const Error &error) {
  ++errors_;
  if (error.code == LF_E_DEVICE && !device_lost_) device_lost_ = error;
  return ipc::encode_error(id, error);
}

std::string RequestHandler::flip_reply(uint64_t id, Result<FlipEvent> flip, bool with_checksum,
                                       std::vector<FlipEvent> *events) {
  if (!flip) return error_reply(id, flip.error());
  msg::FlipResult result{flip->version, flip->previous, std::nullopt, std::nullopt};
  if (with_checksum) result.checksum = flip->checksum;
  if (flip->repeated) {
    result.repeated = true;  // the version this lease made before; nothing flipped now
  } else {
    ++events_published_;
    events->push_back(std::move(flip).value());
  }
  return msg::encode_result(id, result);
}

std::string RequestHandler::dispatch(const msg::Envelope &envelope, const msgpack::object &args,
                                     const std::optional<PeerCredentials> &peer, uint64_t now_ns,
                                     std::vector<FlipEvent> *events, bool *deferred) {
  const uint64_t id = envelope.id;
  const std::string_view op = envelope.op;
  // Decodes the args with the schema of request type Q and calls `serve` with them.
  const auto with = [&]<class Q>(std::type_identity<Q>, auto &&serve) -> std::string {
    Result<Q> q = msg::decode_map<Q>(args, "args");
    if (!q) return error_reply(id, q.error());
    return serve(q.value());
  };
  using std::type_identity;

  if (op == msg::Hello::kOp)
    return with(type_identity<msg::Hello>{}, [&](const msg::Hello &q) { return hello(q, id); });
  if (op == msg::CreateAdapter::kOp)
    return with(type_identity<msg::CreateAdapter>{},
                [&](const msg::CreateAdapter &q) { return create(q, id); });
  if (op == msg::List::kOp)
    return with(type_identity<msg::List>{}, [&](const msg::List &) { return list(id); });
  if (op == msg::Info::kOp)
    return with(type_identity<msg::Info>{}, [&](const msg::Info &q) { return info(q, id); });
  if (op == msg::Stats::kOp)
    return with(type_identity<msg::Stats>{}, [&](const msg::Stats &) { return stats(id); });
  if (op == msg::DropAdapter::kOp)
    return with(type_identity<msg::DropAdapter>{}, [&](const msg::DropAdapter &q) {
      return flip_reply(id, registry_.drop(q.name), false, events);
    });
  if (op == msg::Rollback::kOp)
    return with(type_identity<msg::Rollback>{}, [&](const msg::Rollback &q) {
      return flip_reply(id, registry_.rollback(q.name, q.version), true, events);
    });
  if (op == msg::BeginWrite::kOp)
    return with(type_identity<msg::BeginWrite>{}, [&](const msg::BeginWrite &q) {
      Result<Requester> who = requester_of(peer);
      if (!who) return error_reply(id, who.error());
      Result<Lease> lease = registry_.begin_write({q.name, q.lease_ms, who.value(), q.token.value_or(0)}, now_ns);
      if (!lease) return error_reply(id, lease.error());
      return msg::encode_result(id, msg::BeginWriteResult{lease->id, lease->adapter,
                                                          lease->incarnation, lease->slot,
                                                          lease->data_offset, lease->slot_bytes});
    });
  if (op == msg::Commit::kOp)
    return with(type_identity<msg::Commit>{}, [&](const msg::Commit &q) {
      Result<Requester> who = requester_of(peer);
      if (!who) return error_reply(id, who.error());
      CommitRequest c{q.lease, static_cast<uint32_t>(std::min<uint64_t>(q.flags, UINT32_MAX)),
                      q.checksum, std::nullopt, who.value(), q.version};
      if (q.event) {
        device::IpcHandle handle;
        std::memcpy(handle.bytes, q.event->bytes.data(), sizeof handle.bytes);
        c.event = handle;
      }
      Result<bool> done = registry_.copies_done(c, now_ns);
      if (!done) return error_reply(id, done.error());
      if (!done.value()) {
        *deferred = true;  // the writer's copies are still running: the server asks again
        return std::string();
      }
      return flip_reply(id, registry_.commit(c, now_ns), true, events);
    });
  if (op == msg::Abort::kOp)
    return with(type_identity<msg::Abort>{}, [&](const msg::Abort &q) {
      Result<Requester> who = requester_of(peer);
      if (!who) return error_reply(id, who.error());
      if (Status s = registry_.abort(q.lease, who.value()); !s) return error_reply(id, s.error());
      return msg::encode_result(id, msg::Empty{});
    });
  if (op == msg::OpenReader::kOp)
    return with(type_identity<msg::OpenReader>{}, [&](const msg::OpenReader &) {
      Result<Requester> who = requester_of(peer);
      if (!who) return error_reply(id, who.error());
      Result<uint32_t> entry = registry_.claim_reader(who.value());
      if (!entry) return error_reply(id, entry.error());
      return msg::encode_result(id, msg::OpenReaderResult{entry.value(), who->pid});
    });
  return error_reply(id, make_error(LF_E_UNKNOWN_OP,
                                    "unknown op '" + ipc::printable(op, 64) + "'"));
}

std::string RequestHandler::hello(const msg::Hello &q, uint64_t id) {
  if (q.protocol != ipc::kProtocolVersion)
    return error_reply(
        id, make_error(LF_E_PROTOCOL_VERSION,
                       "the client speaks protocol " + std::to_string(q.protocol) +
                           ", this daemon speaks " + std::to_string(ipc::kProtocolVersion)));
  const ipc::Arena &arena = registry_.arena();
  return msg::encode_result(
      id, msg::HelloResult{ipc::kProtocolVersion, identity_.version, identity_.instance,
                           arena.control().name(), arena.data().name(), arena.data_bytes(),
                           arena.max_readers(), arena.max_adapters()});
}

std::string RequestHandler::create(const msg::CreateAdapter &m, uint64_t id) {
  CreateRequest q;
  q.name = m.name;
  q.tensors.reserve(m.tensors.size());
  for (const msg::TensorArg &t : m.tensors) {
    if (t.shape.size() > ipc::kMaxDims)
      return error_reply(id, make_error(LF_E_TOO_LARGE, "tensor '" + ipc::printable(t.name) +
                                                            "' has more than " +
                                                            std::to_string(ipc::kMaxDims) +
                                                            " dimensions"));
    q.tensors.push_back({t.name, t.dtype.code, t.shape});
  }
  if (m.lora) {
    const msg::LoraArg &lora = *m.lora;
    const double alpha = lora.alpha.value_or(static_cast<double>(lora.rank));
    if (lora.rank > 65536)
      return error_reply(id, make_error(LF_E_INVALID_ARGUMENT, "LoRA rank is over 65536"));
    if (!std::isfinite(alpha))
      return error_reply(id, make_error(LF_E_INVALID_ARGUMENT, "LoRA alpha is not finite"));
    q.rank = static_cast<uint32_t>(lora.rank);
    q.alpha = alpha;
    q.use_rslora = lora.use_rslora;
    for (const std::string &module : lora.target_modules.names) {
      if (!q.target_modules.empty()) q.target_modules += ',';
      q.target_modules += module;
    }
  }
  q.metadata = m.metadata;
  if (m.slots > ipc::kMaxSlots || m.history > static_cast<int64_t>(ipc::kMaxSlots) ||
      m.history < -1)
    return error_reply(id, make_error(LF_E_INVALID_ARGUMENT,
                                      "slots must be 0..64 and history -1..62"));
  q.slots = static_cast<uint32_t>(m.slots);
  q.history = static_cast<int32_t>(m.history);
  Result<std::vector<int>> devices = parse_placement(m.placement);
  if (!devices) return error_reply(id, devices.error());
  q.devices = std::move(devices).value();
  if (Status s = registry_.create(q); !s) return error_reply(id, s.error());
  const ipc::AdapterRecord &r = registry_.arena().adapter(*registry_.find(q.name));
  return msg::encode_result(id, msg::CreateResult{q.name, r.slot_bytes, r.slot_count,
                                                  r.history_depth});
}

std::string RequestHandler::list(uint64_t id) {
  msg::ListResult result;
  for (uint32_t index : registry_.live_adapters()) {
    const ipc::AdapterRecord &r = registry_.arena().adapter(index);
    result.adapters.push_back({r.name, ipc::active_version(r.active.load()), r.tensor_count,
                               r.slot_bytes, r.slot_count, r.history_depth});
  }
  return msg::encode_result(id, result);
}

std::string RequestHandler::info(const msg::Info &q, uint64_t id) {
  std::optional<uint32_t> index = registry_.find(q.name);
  if (!index)
    return error_reply(id, make_error(LF_E_NOT_FOUND, "no adapter '" + ipc::printable(q.name) + "'"));
  const ipc::Arena &arena = registry_.arena();
  const ipc::AdapterRecord &r = arena.adapter(*index);
  const uint64_t active = r.active.load();
  const SlotCensus census = registry_.census(*index);
  msg::InfoResult info;
  info.name = r.name;
  info.index = *index;
  info.incarnation = r.incarnation.load();
  info.version = ipc::active_version(active);
  info.last_version = r.last_version;
  info.slot_bytes = r.slot_bytes;
  info.history = r.history_depth;
  info.placement = placement_name(r, registry_.devices());
  info.lora = {r.lora.rank, r.lora.alpha, r.lora.use_rslora != 0,
               msg::ModuleList::split(arena.pool_string(r.lora.target_modules_offset))};
  info.metadata = arena.pool_string(r.lora.metadata_offset);
  info.counters = {r.commits.load(),        r.aborts.load(),         r.rollbacks.load(),
                   r.write_ns_total.load(), r.check_ns_total.load(), r.event_waits.load(),
                   r.event_wait_ns_total.load()};
  info.restart_copy = {r.restart_copy_bytes, r.restart_copy_version};
  info.census = {census.free, census.writing, census.committed, census.abandoned, census.pinned};
  for (uint32_t s = 0; s < r.slot_count; ++s) {
    const ipc::SlotRecord &slot = r.slots[s];
    const uint64_t w = slot.word.load();
    info.slots.push_back({slot_state_name(ipc::slot_word_state(w)), ipc::slot_word_version(w),
                          active != 0 && ipc::active_slot(active) == s, slot.checksum,
                          slot.committed_unix_ns});
  }
  const ipc::TensorDesc *descs = arena.tensors(r);
  for (uint32_t t = 0; t < r.tensor_count; ++t) {
    const ipc::TensorDesc &d = descs[t];
    info.tensors.push_back({d.name, msg::DType{d.dtype},
                            std::vector<int64_t>(d.shape, d.shape + d.ndim), d.offset, d.nbytes});
  }
  return msg::encode_result(id, info);
}

std::string RequestHandler::stats(uint64_t id) {
  const ipc::Arena &arena = registry_.arena();
  const ReapReport &reclaimed = registry_.reclaimed_total();
  msg::StatsResult s;
  s.instance = identity_.instance;
  s.uptime_s = static_cast<double>(ipc::unix_now_ns() - identity_.started_unix_ns) / 1e9;
  s.adapters = registry_.live_adapters().size();
  s.max_adapters = arena.max_adapters();
  s.readers = registry_.live_readers();
  s.max_readers = arena.max_readers();
  s.pins = registry_.pins_held();
  s.oldest_pin_age_s =
      static_cast<double>(registry_.oldest_pin_age_ns(ipc::monotonic_now_ns())) / 1e9;
  s.flips = arena.header().flips.load();
  s.requests = requests_;
  s.errors = errors_;
  s.data_bytes = registry_.data_allocator().size();
  s.data_used = registry_.data_allocator().used();
  s.events = events_published_;
  s.reclaimed = {reclaimed.dead_readers, reclaimed.pins_cleared, reclaimed.dead_writers,
                 reclaimed.expired_leases, reclaimed.adapters_freed};
  return msg::encode_result(id, s);
}

}  // namespace loraflip::daemon
