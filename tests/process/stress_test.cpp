// Guarantees 1 and 3 under load: a daemon, one writer and eight reader processes for at least
// 10 s. Every version's bytes are a pattern of its version number; readers check every word
// right after acquiring and again just before releasing (after holding the pin a while), so a
// torn version or a slot rewritten under a pin is caught.
#include <doctest/doctest.h>

#include <cstdio>
#include <fcntl.h>
#include <unistd.h>

#include "support.hpp"

using namespace lftest;

namespace {

struct ReaderTally {
  uint64_t reads = 0;
  uint64_t versions = 0;
  uint64_t torn_words = 0;
  uint64_t failures = 0;
};

int reader_main(const std::string &dir, const std::string &name, int seconds, int fd, int seed) {
  lf_reader_t *reader = nullptr;
  if (lf_reader_open(dir.c_str(), &reader) != LF_OK) return 3;
  lf_adapter_ref_t ref = 0;
  if (lf_reader_find(reader, name.c_str(), &ref) != LF_OK) return 4;
  ReaderTally tally;
  uint64_t last = 0;
  const uint64_t end = now_ms() + static_cast<uint64_t>(seconds) * 1000;
  unsigned hold = static_cast<unsigned>(seed);
  while (now_ms() < end) {
    lf_pin_t *pin = nullptr;
    const int rc = lf_reader_acquire(reader, ref, 0, &pin);
    if (rc != LF_OK) {
      ++tally.failures;
      continue;
    }
    tally.torn_words += count_torn(pin);
    // Hold some pins across several flips so that writers must route around them.
    hold = hold * 1103515245u + 12345u;
    if ((hold >> 16) % 8 == 0) usleep(2000 + (hold >> 20) % 3000);
    tally.torn_words += count_torn(pin);
    const uint64_t v = lf_pin_version(pin);
    if (v < last) ++tally.failures;  // the active version never goes back without a rollback
    if (v != last) ++tally.versions;
    last = v;
    ++tally.reads;
    lf_pin_release(pin);
  }
  lf_reader_close(reader);
  return write(fd, &tally, sizeof tally) == sizeof tally ? 0 : 5;
}

}  // namespace

TEST_CASE("eight readers never see a torn version or a slot rewritten under their pin") {
  Daemon daemon("stress");
  daemon.start();
  lf_client_t *client = nullptr;
  REQUIRE(lf_client_open(daemon.dir().c_str(), 5000, &client) == LF_OK);
  const std::string name = "stress";
  // 16 tensors of 16 Ki f32: 1 MiB per version, history 2.
  REQUIRE(create_pattern_adapter(client, name, 16, 16384, 2) == LF_OK);

  // Version 1 first, so that readers always find something to pin.
  uint64_t version = 0;
  lf_writer_t *w = nullptr;
  REQUIRE(lf_client_begin_write(client, name.c_str(), 0, &w) == LF_OK);
  fill_pattern(w, 1);
  REQUIRE(lf_writer_commit(w, 0, &version) == LF_OK);
  REQUIRE(version == 1);

  const int kReaders = 8, kSeconds = 10;
  int fds[2];
  REQUIRE(pipe2(fds, O_CLOEXEC) == 0);
  std::vector<pid_t> readers;
  for (int i = 0; i < kReaders; ++i)
    readers.push_back(spawn([&, i] { return reader_main(daemon.dir(), name, kSeconds, fds[1], i + 1); }));
  close(fds[1]);

  uint64_t commits = 1, busy = 0;
  const uint64_t end = now_ms() + kSeconds * 1000 + 200;
  while (now_ms() < end) {
    lf_writer_t *writer = nullptr;
    const int rc = lf_client_begin_write(client, name.c_str(), 0, &writer);
    if (rc == LF_E_NO_FREE_SLOT) {  // every free slot is pinned right now: readers hold them
      ++busy;
      usleep(200);
      continue;
    }
    REQUIRE(rc == LF_OK);
    fill_pattern(writer, commits + 1);
    REQUIRE(lf_writer_commit(writer, 0, &version) == LF_OK);
    ++commits;
    REQUIRE(version == commits);
  }

  ReaderTally total;
  for (pid_t pid : readers) CHECK(wait_child(pid) == 0);
  ReaderTally t;
  int reported = 0;
  while (read(fds[0], &t, sizeof t) == sizeof t) {
    total.reads += t.reads;
    total.versions += t.versions;
    total.torn_words += t.torn_words;
    total.failures += t.failures;
    ++reported;
  }
  close(fds[0]);
  std::printf("stress: %llu versions published, %llu reads checked (%llu version changes seen), "
              "%llu torn words, %llu begin_write retries on pinned slots\n",
              (unsigned long long)commits, (unsigned long long)total.reads,
              (unsigned long long)total.versions, (unsigned long long)total.torn_words,
              (unsigned long long)busy);
  CHECK(reported == kReaders);
  CHECK(total.torn_words == 0);
  CHECK(total.failures == 0);
  CHECK(commits > 100);
  CHECK(total.reads > 1000);
  lf_client_close(client);
}
