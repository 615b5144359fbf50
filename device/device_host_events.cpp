// The host implementation's interprocess events: a shared-memory word per event, which a
// record on a stream marks pending and the stream's worker completes in stream order; opened
// once per process and reference-counted; the segments of dead creators swept away.
// Shared declarations: device_host_internal.hpp.
#include <cstdlib>
#include <cstring>
#include <dirent.h>
#include <new>
#include <unistd.h>

#include "device/device_host_internal.hpp"
#include "ipc/proc.hpp"

namespace loraflip::device::host_detail {

Result<Event> HostBackend::create_event(int device) {
  if (auto s = check_device(device); !s) return s.error();
  CurrentDevice on(*this);
  if (auto s = on.use(device); !s) return s.error();
  if (auto s = require_current(device, "a new event"); !s) return s.error();
  uint64_t n;
  bool sweep = false;
  {
    std::lock_guard lock(mu_);
    n = next_event_++;
    sweep = !swept_events_;
    swept_events_ = true;
  }
  if (sweep) remove_dead_events();
  const std::string name = fit_name("loraflip." + instance_ + ".ev" + std::to_string(::getpid()) +
                                    "." + std::to_string(n));
  auto segment = Segment::create(name, sizeof(EventWord), 0660, -1);
  if (!segment) return segment.error();
  const uint64_t nonce = make_nonce();
  auto *word = new (segment->base()) EventWord{};
  word->head = SegmentHead{kEventMagic, nonce, 0};
  word->state.store(0);  // complete, like a CUDA event never recorded

  Event event;
  event.device = device;
  HostHandle h{};
  h.magic = kEventMagic;
  h.nonce = nonce;
  std::memcpy(h.name, name.c_str(), name.size() + 1);
  std::memcpy(event.handle.bytes, &h, sizeof h);
  auto mapping =
      std::make_shared<EventMapping>(EventMapping{std::move(segment).value(), word, true, {}, 1});
  event.impl = mapping.get();
  std::lock_guard lock(mu_);
  events_.emplace(mapping.get(), std::move(mapping));
  return event;
}

Result<Event> HostBackend::open_event(int device, const IpcHandle &handle) {
  if (auto s = check_device(device); !s) return s.error();
  auto parsed = parse_handle(handle, kEventMagic, "event");
  if (!parsed) return parsed.error();
  const HostHandle &h = parsed.value();
  const std::string key = std::to_string(device) + "/" + h.name + "/" + hex(h.nonce);
  Event event;
  event.device = device;
  event.handle = handle;
  std::lock_guard lock(mu_);
  if (auto it = opened_events_.find(key); it != opened_events_.end()) {
    ++it->second->refs;
    event.impl = it->second;
    return event;
  }
  CurrentDevice on(*this);
  if (auto s = on.use(device); !s) return s.error();
  if (auto s = require_current(device, "opening an event"); !s) return s.error();
  auto segment = Segment::open(h.name, Segment::Access::kReadWrite);
  if (!segment) {
    Error e = segment.error();
    if (e.code == LF_E_NOT_FOUND) e.message += " (the event was destroyed by its creator)";
    return e;
  }
  auto *word = reinterpret_cast<EventWord *>(segment->base());
  if (segment->size() < sizeof(EventWord) || word->head.magic != kEventMagic ||
      word->head.nonce != h.nonce)
    return make_error(LF_E_NOT_FOUND, std::string("stale event handle: shared memory '/") + h.name +
                                          "' now holds another object");
  auto mapping =
      std::make_shared<EventMapping>(EventMapping{std::move(segment).value(), word, false, key, 1});
  event.impl = mapping.get();
  opened_events_.emplace(key, mapping.get());
  events_.emplace(mapping.get(), std::move(mapping));
  return event;
}

Status HostBackend::record(Event &event, Stream stream) {
  auto m = find_event(event);
  if (!m) return m.error();
  auto s = stream_of(stream);
  if (!s) return s.error();
  HostStream *hs = s.value();
  // cudaEventRecord refuses an event and a stream of different devices
  // (cudaErrorInvalidResourceHandle): a writer's commit event on the stream of another slot's
  // device, say.
  if (hs != nullptr && hs->device() != event.device)
    return invalid("an event of device " + std::to_string(event.device) +
                   " recorded on a stream of device " + std::to_string(hs->device()));
  CurrentDevice on(*this);
  if (auto u = on.use(event.device); !u) return u;
  // The null stream is the current device's: the same refusal.
  if (auto r = require_current(event.device, "an event record"); !r) return r;
  std::atomic<uint64_t> &state = m.value()->word->state;
  const uint64_t pending = hs != nullptr ? kPending : 0;  // the null stream is synchronous
  uint64_t old = state.load();
  uint64_t next;
  do {
    next = (((old >> 1) + 1) << 1) | pending;
  } while (!state.compare_exchange_weak(old, next));
  if (hs != nullptr)
    hs->enqueue([mapping = std::move(m).value(), next] {
      uint64_t expected = next;
      mapping->word->state.compare_exchange_strong(
          expected, next & ~kPending, std::memory_order_release, std::memory_order_relaxed);
    });
  return {};
}

Result<bool> HostBackend::query(Event &event) {
  auto m = find_event(event);
  if (!m) return m.error();
  CurrentDevice on(*this);
  if (auto s = on.use(event.device); !s) return s.error();
  if (auto s = require_current(event.device, "an event query"); !s) return s.error();
  return (m.value()->word->state.load(std::memory_order_acquire) & kPending) == 0;
}

void HostBackend::destroy_event(Event &event) {
  if (event.impl == nullptr) return;
  CurrentDevice on(*this);
  // Nothing to report to: a destroy that does not run on its device leaves the event, a leak.
  if (!on.use(event.device) || !require_current(event.device, "destroying an event")) return;
  std::shared_ptr<EventMapping> doomed;  // released after the lock
  {
    std::lock_guard lock(mu_);
    auto it = events_.find(static_cast<EventMapping *>(event.impl));
    if (it == events_.end()) return;
    EventMapping &m = *it->second;
    if (!m.creator && --m.refs > 0) {
      event.impl = nullptr;
      return;
    }
    if (m.creator)
      Segment::remove(m.segment.name());
    else
      opened_events_.erase(m.key);
    doomed = std::move(it->second);
    events_.erase(it);
  }
  event.impl = nullptr;
}

Result<std::shared_ptr<EventMapping>> HostBackend::find_event(const Event &event) const {
  std::lock_guard lock(mu_);
  auto it = events_.find(static_cast<EventMapping *>(event.impl));
  if (it == events_.end()) return invalid("not an event of this backend (destroyed?)");
  return it->second;
}

void HostBackend::remove_dead_events() const {
  const std::string prefix = "loraflip." + instance_ + ".ev";
  DIR *dir = ::opendir("/dev/shm");
  if (dir == nullptr) return;  // not Linux's tmpfs: nothing to sweep this way
  while (const dirent *entry = ::readdir(dir)) {
    const std::string name = entry->d_name;
    if (name.rfind(prefix, 0) != 0) continue;
    // "<prefix><pid>.<n>"; names too long for a handle were hashed and are left alone.
    char *end = nullptr;
    const long pid = std::strtol(name.c_str() + prefix.size(), &end, 10);
    if (pid <= 0 || end == nullptr || *end != '.') continue;
    if (!ipc::process_alive(static_cast<pid_t>(pid), 0)) ipc::Segment::remove(name);
  }
  ::closedir(dir);
}

}  // namespace loraflip::device::host_detail
