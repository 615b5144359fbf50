// What both implementations share: the bounded wait on an event.
#include <algorithm>
#include <chrono>
#include <thread>

#include "device/device.hpp"

namespace loraflip::device {

Status wait_event(Backend &backend, Event &event, int timeout_ms) {
  using Clock = std::chrono::steady_clock;
  const auto deadline = Clock::now() + std::chrono::milliseconds(std::max(timeout_ms, 0));
  // Start by spinning briefly (a record usually completes within microseconds of a copy), then
  // back off to 1 ms so that a long wait costs little CPU.
  auto pause = std::chrono::microseconds(20);
  for (;;) {
    auto done = backend.query(event);
    if (!done.ok()) return done.error();
    if (done.value()) return {};
    const auto now = Clock::now();
    if (now >= deadline)
      return make_error(LF_E_TIMEOUT, "the event was still pending after " +
                                          std::to_string(timeout_ms) +
                                          " ms (its writer may be slow, stuck or dead)");
    std::this_thread::sleep_for(std::min<Clock::duration>(pause, deadline - now));
    pause = std::min(pause * 2, std::chrono::microseconds(1000));
  }
}

}  // namespace loraflip::device
