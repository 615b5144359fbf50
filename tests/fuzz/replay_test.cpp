// Replays every file of the fuzz corpus (seeds and the crashes the fuzzer found) through
// RequestHandler::handle with the fuzzer's checks, in the normal gcc build: a regression of
// any of them fails here without clang or libFuzzer.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "harness.hpp"

namespace fs = std::filesystem;

namespace {

std::vector<fs::path> corpus_files() {
  const char *dir = std::getenv("LF_FUZZ_CORPUS");
  REQUIRE_MESSAGE(dir != nullptr, "set LF_FUZZ_CORPUS to tests/fuzz/corpus");
  std::vector<fs::path> files;
  for (const auto &e : fs::directory_iterator(dir))
    if (e.is_regular_file()) files.push_back(e.path());
  std::sort(files.begin(), files.end());
  return files;
}

std::string read_file(const fs::path &p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

TEST_CASE("the input splitter cuts at every separator and keeps empty pieces") {
  using loraflip::fuzz::split_requests;
  const std::string sep(loraflip::fuzz::kSeparator);
  CHECK(split_requests("abc").size() == 1);
  const std::string input = "a" + sep + sep + "b";
  const auto parts = split_requests(input);
  REQUIRE(parts.size() == 3);
  CHECK(parts[0] == "a");
  CHECK(parts[1].empty());
  CHECK(parts[2] == "b");
}

TEST_CASE("every corpus file replays without a violation") {
  const std::vector<fs::path> files = corpus_files();
  REQUIRE(files.size() >= 20);
  loraflip::fuzz::Harness harness;
  size_t requests = 0, device_seeds = 0;
  for (const fs::path &file : files) {
    const std::string name = file.filename().string();
    CAPTURE(name);
    if (name.rfind("ok-device-", 0) == 0) ++device_seeds;
    const loraflip::fuzz::Outcome out = harness.run(read_file(file));
    requests += out.requests;
    for (const std::string &v : out.violations) FAIL_CHECK(v);
    // The seeds must keep doing what their names say, or the fuzzer starts from shallow states.
    if (name.rfind("ok-", 0) == 0) CHECK_MESSAGE(out.errors == 0, "a seed meant to succeed got errors");
    if (name.rfind("err-", 0) == 0) CHECK_MESSAGE(out.errors > 0, "a seed meant to fail got none");
  }
  // Without them the fuzzer reaches device adapters only by luck (a placement string, then a
  // write and a commit on that adapter, all in one input).
  CHECK_MESSAGE(device_seeds >= 3, "the seeds that write, replicate and drop device adapters are gone");
  MESSAGE(files.size() << " files, " << requests << " requests");
}

TEST_CASE("the same input replays the same way twice (each input starts from an empty arena)") {
  loraflip::fuzz::Harness harness;
  for (const fs::path &file : corpus_files()) {
    const std::string input = read_file(file);
    const auto a = harness.run(input);
    const auto b = harness.run(input);
    CHECK(a.requests == b.requests);
    CHECK(a.errors == b.errors);
  }
}
