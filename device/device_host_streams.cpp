// The host implementation's streams: a worker thread per stream runs its copies and event
// records in order, as a GPU stream does; a paused stream (a test hook) queues and runs nothing,
// as a stream stuck behind long kernels would. Each device's default stream is one of them too
// (one per process), so work on the null stream is as asynchronous as on CUDA's. Shared
// declarations: device_host_internal.hpp.
#include "device/device_host_internal.hpp"

namespace loraflip::device::host_detail {

HostStream::~HostStream() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
    paused_ = false;  // what was queued still runs, as on a destroyed CUDA stream
  }
  work_cv_.notify_all();
  worker_.join();
}

void HostStream::enqueue(std::function<void()> op) {
  {
    std::lock_guard lock(mu_);
    queue_.push_back(std::move(op));
  }
  work_cv_.notify_one();
}

void HostStream::wait_idle() {
  std::unique_lock lock(mu_);
  idle_cv_.wait(lock, [&] { return queue_.empty() && !running_; });
}

void HostStream::set_paused(bool paused) {
  {
    std::lock_guard lock(mu_);
    paused_ = paused;
  }
  work_cv_.notify_all();
}

void HostStream::run() {
  std::unique_lock lock(mu_);
  for (;;) {
    work_cv_.wait(lock, [&] { return (!paused_ && !queue_.empty()) || (stop_ && queue_.empty()); });
    if (queue_.empty()) return;  // stopping, and nothing left
    auto op = std::move(queue_.front());
    queue_.pop_front();
    running_ = true;
    lock.unlock();
    op();
    lock.lock();
    running_ = false;
    if (queue_.empty()) idle_cv_.notify_all();
  }
}

Result<HostStream *> HostBackend::stream_of(Stream stream) const {
  if (stream == nullptr) return static_cast<HostStream *>(nullptr);
  auto *s = static_cast<HostStream *>(stream);
  if (s->magic != kStreamMagic) return invalid("not a host stream (destroyed?)");
  return s;
}

HostStream *HostBackend::issuing_stream(HostStream *stream, int device) {
  if (stream != nullptr) return stream;
  return static_cast<HostStream *>(loraflip_host_default_stream(device));
}

Result<int> HostBackend::stream_device(Stream stream) {
  if (stream == nullptr) return invalid("stream_device of the null stream (each device has one)");
  auto s = stream_of(stream);
  if (!s) return s.error();
  return s.value()->device();
}

Result<bool> HostBackend::capturing(int device, Stream stream) {
  if (auto s = check_device(device); !s) return s.error();
  auto s = stream_of(stream);
  if (!s) return s.error();
  // The legacy default stream cannot be captured (cudaStreamBeginCapture refuses it).
  return s.value() != nullptr && s.value()->capturing();
}

Result<Stream> HostBackend::create_stream(int device) {
  if (auto s = check_device(device); !s) return s.error();
  CurrentDevice on(*this);
  if (auto s = on.use(device); !s) return s.error();
  if (auto s = require_current(device, "a new stream"); !s) return s.error();
  auto stream = std::make_unique<HostStream>(device);
  HostStream *raw = stream.get();
  std::lock_guard lock(mu_);
  streams_.emplace(raw, std::move(stream));
  return static_cast<Stream>(raw);
}

void HostBackend::destroy_stream(int device, Stream stream) {
  if (stream == nullptr) return;
  CurrentDevice on(*this);
  // Nothing to report to: a destroy that does not run on its device leaves the stream, a leak.
  if (!on.use(device) || !require_current(device, "destroying a stream")) return;
  std::unique_ptr<HostStream> owned;
  {
    std::lock_guard lock(mu_);
    auto it = streams_.find(static_cast<HostStream *>(stream));
    if (it == streams_.end()) return;
    owned = std::move(it->second);
    streams_.erase(it);
  }
  owned.reset();  // outside the lock: joining runs what is queued, which may take the lock
}

Status HostBackend::synchronize(int device, Stream stream) {
  if (auto s = check_device(device); !s) return s;
  auto s = stream_of(stream);
  if (!s) return s.error();
  CurrentDevice on(*this);
  if (auto u = on.use(device); !u) return u;
  // The null stream is the current device's.
  if (auto r = require_current(device, "a synchronize"); !r) return r;
  HostStream *hs = issuing_stream(s.value(), device);
  // cudaStreamSynchronize on a capturing stream fails (and ends the capture); waiting here
  // would wait for work that never runs.
  if (hs->capturing())
    return make_error(LF_E_INVALID_ARGUMENT,
                      "synchronize of a stream that is being captured into a graph "
                      "(cudaErrorStreamCaptureUnsupported)");
  hs->wait_idle();
  return {};
}

}  // namespace loraflip::device::host_detail

namespace loraflip::device {

namespace {

// The host stream `stream` names (nullptr: the default stream of `device`), or nullptr.
host_detail::HostStream *hook_stream(Stream stream, int device) {
  if (stream == nullptr)
    return static_cast<host_detail::HostStream *>(loraflip_host_default_stream(device));
  auto *s = static_cast<host_detail::HostStream *>(stream);
  return s->magic == host_detail::kStreamMagic ? s : nullptr;
}

}  // namespace

void host_pause_stream(Stream stream, bool paused) {
  if (stream == nullptr) return;
  if (auto *s = hook_stream(stream, 0)) s->set_paused(paused);
}

void host_pause_default_stream(int device, bool paused) {
  if (auto *s = hook_stream(nullptr, device)) s->set_paused(paused);
}

void host_capture_stream(Stream stream, bool capturing) {
  if (stream == nullptr) return;
  if (auto *s = hook_stream(stream, 0)) s->set_capturing(capturing);
}

void host_enqueue(Stream stream, int device, std::function<void()> work) {
  if (auto *s = hook_stream(stream, device)) s->enqueue(std::move(work));
}

}  // namespace loraflip::device
