// The one doctest main of the unit and multi-process tests. Beside running the cases it makes
// skips visible (tests/skip.hpp): when every case that ran called LF_SKIP it exits 77, meson's
// "skipped", and prints the reasons last; when no case ran at all (a filter of meson.build
// that matches nothing) it fails rather than pass having checked nothing.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cstdio>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "tests/skip.hpp"

namespace {

std::string g_current;  // the test case running now
std::set<std::string> g_ran;
std::vector<std::pair<std::string, std::string>> g_skips;  // case, reason
bool g_query = false;  // --help, --list-test-cases...: nothing runs

// Follows the run (which case is running, which ran); reports nothing itself.
struct SkipListener : doctest::IReporter {
  explicit SkipListener(const doctest::ContextOptions &) {}
  void report_query(const doctest::QueryData &) override { g_query = true; }
  void test_run_start() override {}
  void test_run_end(const doctest::TestRunStats &) override {}
  void test_case_start(const doctest::TestCaseData &data) override {
    g_current = data.m_name;
    g_ran.insert(g_current);
  }
  void test_case_reenter(const doctest::TestCaseData &) override {}
  void test_case_end(const doctest::CurrentTestCaseStats &) override {}
  void test_case_exception(const doctest::TestCaseException &) override {}
  void subcase_start(const doctest::SubcaseSignature &) override {}
  void subcase_end() override {}
  void log_assert(const doctest::AssertData &) override {}
  void log_message(const doctest::MessageData &) override {}
  void test_case_skipped(const doctest::TestCaseData &) override {}
};

}  // namespace

DOCTEST_REGISTER_LISTENER("lftest-skips", 1, SkipListener);

namespace lftest {

void record_skip(const std::string &reason) {
  g_skips.emplace_back(g_current, reason);
  std::printf("SKIP: %s: %s\n", g_current.c_str(), reason.c_str());
  std::fflush(stdout);
}

}  // namespace lftest

int main(int argc, char **argv) {
  doctest::Context context(argc, argv);
  const int failed = context.run();
  if (failed != 0 || context.shouldExit() || g_query) return failed;
  if (g_ran.empty()) {
    std::printf("FAIL: no test case ran (a --test-case filter that matches none?)\n");
    return 1;
  }
  std::set<std::string> skipped;
  for (const auto &[name, reason] : g_skips) skipped.insert(name);
  // Last, so that it is what a reader (and scripts/test) sees of a skipped test.
  for (const auto &[name, reason] : g_skips)
    std::printf("SKIP: %s: %s\n", name.c_str(), reason.c_str());
  return skipped.size() == g_ran.size() ? 77 : 0;  // 77: meson's "skipped"
}
