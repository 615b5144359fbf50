// A daemon serving two host stand-in devices (0 and 1, arenas of 8 MiB), with adapters "on0" and
// "on1" (two f32 tensors of kTwoDeviceElements each, history 1) placed on them: the setup of the
// device tests that write to both devices (device_current_test.cpp, device_fence_test.cpp).
#pragma once

#include <doctest/doctest.h>

#include <cstdint>
#include <string>

#include "support.hpp"

namespace lftest {

inline constexpr int64_t kTwoDeviceElements = 4096;  // per tensor: f32, so 16 KiB

struct TwoDevices {
  Daemon daemon;
  lf_client_t *client = nullptr;
  // Asks what is active while `client` waits for a commit's reply (a client serves one call at
  // a time).
  lf_client_t *observer = nullptr;
  explicit TwoDevices(const std::string &name)
      : daemon(name, {"--devices", "0,1", "--device-backend", "host", "--device-arena-size", "8M"}) {
    daemon.start();
    REQUIRE(lf_client_open(daemon.dir().c_str(), 5000, &client) == LF_OK);
    REQUIRE(lf_client_open(daemon.dir().c_str(), 5000, &observer) == LF_OK);
    for (const char *placement : {"cuda:0", "cuda:1"}) {
      const std::string name_on = std::string("on") + placement[5];
      REQUIRE(create_pattern_adapter(client, name_on, 2, kTwoDeviceElements, 1, placement) ==
              LF_OK);
    }
  }
  ~TwoDevices() {
    lf_client_close(client);
    lf_client_close(observer);
  }
  TwoDevices(const TwoDevices &) = delete;
  TwoDevices &operator=(const TwoDevices &) = delete;

  // The active version of `name`, asked through the observer.
  uint64_t active(const char *name) {
    char *info = nullptr;
    REQUIRE(lf_client_info(observer, name, &info) == LF_OK);
    const int64_t v = json_number(info, "version");
    lf_free(info);
    return static_cast<uint64_t>(v);
  }
};

}  // namespace lftest
