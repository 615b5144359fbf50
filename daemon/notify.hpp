// The systemd notification protocol (sd_notify(3)): one datagram to $NOTIFY_SOCKET. Written
// here rather than linked from libsystemd so the daemon has no hard systemd dependency; it does
// nothing when the daemon does not run under systemd.
#pragma once

#include <cstdint>
#include <string>

namespace loraflip::daemon {

// Sends `state` (e.g. "READY=1", "WATCHDOG=1", "STOPPING=1"). Returns false when
// NOTIFY_SOCKET is unset or the send failed.
bool sd_notify_send(const std::string &state);

// Half of $WATCHDOG_USEC in nanoseconds when the watchdog is enabled for this process
// (WATCHDOG_PID unset or equal to our pid), else 0.
uint64_t watchdog_interval_ns();

}  // namespace loraflip::daemon
