// A test case that cannot run here says so, rather than returning early as a pass:
//
//   if (geteuid() != 0) LF_SKIP("needs root to become another user");
//
// LF_SKIP prints "SKIP: <case>: <reason>", records the skip and returns from the test case
// (so call it from the case's own body, before anything it would leave half done). The doctest
// main of the unit and multi-process tests (tests/main.cpp) then exits 77, meson's "skipped",
// when every case that ran was skipped, its last line the reason (what scripts/test prints).
// A case that may skip is registered as a meson test of its own (tests/meson.build), so that
// its skip shows there and the rest of its executable still counts as passes.
#pragma once

#include <string>

namespace lftest {

// Records that the running test case is skipped, and why. The test thread only.
void record_skip(const std::string &reason);

}  // namespace lftest

#define LF_SKIP(reason)                 \
  do {                                  \
    ::lftest::record_skip(reason);      \
    return;                             \
  } while (false)
