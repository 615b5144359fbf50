// libFuzzer target: bytes in, RequestHandler::handle over a Registry on a small arena with two
// host stand-in devices, and the checks of tests/fuzz/harness.hpp after every reply. Built by
// tests/fuzz/run.sh with clang++ -fsanitize=fuzzer,address,undefined; a check that fails
// aborts, so libFuzzer keeps the input as a crash-* file.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string_view>

#include "harness.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  // One arena and two host device blocks per process, removed when the process exits normally
  // (libFuzzer's -max_total_time ends with exit()); a crashed one's segments are removed by the
  // next Harness (see remove_orphans).
  static loraflip::fuzz::Harness harness;
  const loraflip::fuzz::Outcome out =
      harness.run(std::string_view(reinterpret_cast<const char *>(data), size));
  if (!out.violations.empty()) {
    for (const std::string &v : out.violations) std::fprintf(stderr, "violation: %s\n", v.c_str());
    std::abort();
  }
  return 0;
}
