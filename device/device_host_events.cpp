// The host implementation's events: a shared-memory word per event, which a record on a stream
// marks pending and the stream's worker completes in stream order; opened once per process
// (never in the process that made it, which CUDA refuses) and reference-counted; the segments
// of dead creators swept away. Local events are the same without an exported handle. A wait on
// an event holds a stream's worker until the record it names is done.
// Shared declarations: device_host_internal.hpp.
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <dirent.h>
#include <thread>
#include <new>
#include <unistd.h>

#include "device/device_host_internal.hpp"
#include "ipc/proc.hpp"

namespace loraflip::device::host_detail {

Result<Event> HostBackend::create_event(int device) { return make_event(device, true); }

// A local event needs no segment, but sharing one implementation keeps record, query and wait
// the same for both kinds; only its handle stays empty, so it cannot leave the process.
Result<Event> HostBackend::create_local_event(int device) { return make_event(device, false); }

Result<Event> HostBackend::make_event(int device, bool exported) {
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
  h.creator = static_cast<uint32_t>(::getpid());
  h.nonce = nonce;
  std::memcpy(h.name, name.c_str(), name.size() + 1);
  if (exported) std::memcpy(event.handle.bytes, &h, sizeof h);
  auto mapping =
      std::make_shared<EventMapping>(EventMapping{std::move(segment).value(), word, true, {}, 1, 0, nullptr, false});
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
  // cudaIpcOpenEventHandle refuses an event of the calling process: in-process code that
  // passes through it here would not work on a GPU.
  if (h.creator == static_cast<uint32_t>(::getpid()))
    return invalid("open_event of an event this process created: CUDA refuses to import a "
                   "handle in the process that exported it");
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
      std::make_shared<EventMapping>(EventMapping{std::move(segment).value(), word, false, key, 1, 0, nullptr, false});
  mapping->owner = static_cast<pid_t>(h.creator);
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
  HostStream *runs_on = issuing_stream(hs, event.device);
  std::shared_ptr<EventMapping> mapping = std::move(m).value();
  auto done = std::make_shared<std::atomic<bool>>(false);
  {
    std::lock_guard lock(mu_);
    mapping->last_record_done = done;
    // Captured, the record runs at each replay of the graph, not now: nothing completes it.
    mapping->captured = runs_on->capturing();
  }
  std::atomic<uint64_t> &state = mapping->word->state;
  uint64_t old = state.load();
  uint64_t next;
  do {
    next = (((old >> 1) + 1) << 1) | kPending;
  } while (!state.compare_exchange_weak(old, next));
  if (runs_on->capturing()) return {};
  runs_on->enqueue([mapping = std::move(mapping), done = std::move(done), next] {
    uint64_t expected = next;
    mapping->word->state.compare_exchange_strong(expected, next & ~kPending,
                                                 std::memory_order_release,
                                                 std::memory_order_relaxed);
    done->store(true, std::memory_order_release);
  });
  return {};
}

Status HostBackend::wait_event_on(int device, Stream stream, Event &event) {
  if (auto s = check_device(device); !s) return s;
  auto m = find_event(event);
  if (!m) return m.error();
  auto s = stream_of(stream);
  if (!s) return s.error();
  if (s.value() != nullptr && s.value()->device() != device)
    return invalid("a wait on device " + std::to_string(device) + " with a stream of device " +
                   std::to_string(s.value()->device()));
  CurrentDevice on(*this);
  if (auto u = on.use(device); !u) return u;
  if (auto r = require_current(device, "a stream wait"); !r) return r;
  std::shared_ptr<std::atomic<bool>> done;
  {
    std::lock_guard lock(mu_);
    done = m.value()->last_record_done;
    if (m.value()->captured)
      return invalid("a stream wait on an event recorded during a graph capture");
  }
  // Never recorded in this process: nothing to wait for (cudaStreamWaitEvent on an event never
  // recorded returns at once). An opened event's records are another process's: the shared
  // word says whether the last one is done.
  std::shared_ptr<EventMapping> mapping = std::move(m).value();
  issuing_stream(s.value(), device)->enqueue([done = std::move(done), mapping = std::move(mapping)] {
    auto complete = [&] {
      if (done) return done->load(std::memory_order_acquire);
      return (mapping->word->state.load(std::memory_order_acquire) & kPending) == 0;
    };
    // Blocks this stream's worker, as the GPU holds the stream, until the record is reached.
    while (!complete()) std::this_thread::sleep_for(std::chrono::microseconds(50));
  });
  return {};
}

Result<bool> HostBackend::query(Event &event) {
  auto m = find_event(event);
  if (!m) return m.error();
  CurrentDevice on(*this);
  if (auto s = on.use(event.device); !s) return s.error();
  if (auto s = require_current(event.device, "an event query"); !s) return s.error();
  const EventMapping &mapping = *m.value();
  {
    std::lock_guard lock(mu_);
    if (mapping.captured)
      return invalid("query of an event last recorded in a stream that was being captured "
                     "into a graph (cudaErrorCapturedEvent)");
  }
  if ((mapping.word->state.load(std::memory_order_acquire) & kPending) == 0) return true;
  // The event of a process that is gone: CUDA does not say what a query answers then. The
  // stand-in gives the most dangerous answer, "done", so that a consumer that trusts it (and
  // flips a slot its writer died writing) fails its tests.
  if (!mapping.creator && mapping.owner > 0 && !ipc::process_alive(mapping.owner, 0)) return true;
  return false;
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
