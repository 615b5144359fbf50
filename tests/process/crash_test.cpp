// Guarantees 2, 4 and 6: writers, readers and the daemon killed with SIGKILL at every step.
#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <new>
#include <random>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <unistd.h>
#include <vector>

#include "tests/skip.hpp"
#include "support.hpp"

using namespace lftest;

namespace {

std::string info_json(lf_client_t *client, const std::string &name) {
  char *json = nullptr;
  REQUIRE(lf_client_info(client, name.c_str(), &json) == LF_OK);
  std::string s(json);
  lf_free(json);
  return s;
}

int64_t census(lf_client_t *client, const std::string &name, const std::string &key) {
  const std::string json = info_json(client, name);
  const size_t at = json.find("\"census\":");
  REQUIRE(at != std::string::npos);
  return json_number(json.substr(at), key);
}

// Readers may pin every free slot for a moment; a writer retries, as trainers do.
lf_writer_t *begin_write_retrying(lf_client_t *client, const std::string &name) {
  lf_writer_t *w = nullptr;
  int rc = LF_E_NO_FREE_SLOT;
  for (int tries = 0; rc == LF_E_NO_FREE_SLOT && tries < 2000; ++tries) {
    rc = lf_client_begin_write(client, name.c_str(), 0, &w);
    if (rc == LF_E_NO_FREE_SLOT) sleep_ms(1);
  }
  REQUIRE(rc == LF_OK);
  return w;
}

uint64_t publish(lf_client_t *client, const std::string &name, uint64_t expected_version) {
  lf_writer_t *w = begin_write_retrying(client, name);
  fill_pattern(w, expected_version);
  uint64_t v = 0;
  REQUIRE(lf_writer_commit(w, 0, &v) == LF_OK);
  REQUIRE(v == expected_version);
  return v;
}

uint64_t active_version(const std::string &dir, const std::string &name) {
  lf_reader_t *r = nullptr;
  REQUIRE(lf_reader_open(dir.c_str(), &r) == LF_OK);
  lf_adapter_ref_t ref = 0;
  REQUIRE(lf_reader_find(r, name.c_str(), &ref) == LF_OK);
  lf_pin_t *pin = nullptr;
  uint64_t v = 0;
  if (lf_reader_acquire(r, ref, 0, &pin) == LF_OK) {
    CHECK(count_torn(pin) == 0);
    v = lf_pin_version(pin);
    lf_pin_release(pin);
  }
  lf_reader_close(r);
  return v;
}

// Where the writer stops and waits to be killed.
enum class Step { kAfterConnect, kAfterBegin, kMidCopy, kAfterCopy, kMidCommit };

const char *step_name(Step s) {
  switch (s) {
    case Step::kAfterConnect: return "after connecting";
    case Step::kAfterBegin: return "after begin_write";
    case Step::kMidCopy: return "halfway through its copies";
    case Step::kAfterCopy: return "after its copies";
    case Step::kMidCommit: return "while its commit is in flight";
  }
  return "?";
}

}  // namespace

TEST_CASE("a writer killed at any step never changes the active version and its slot comes back") {
  Daemon daemon("crash-writer");
  daemon.start();
  lf_client_t *client = nullptr;
  REQUIRE(lf_client_open(daemon.dir().c_str(), 5000, &client) == LF_OK);
  const std::string name = "victim";
  REQUIRE(create_pattern_adapter(client, name, 4, 65536, 1) == LF_OK);  // 1 MiB, 3 slots
  uint64_t version = publish(client, name, 1);

  for (Step step : {Step::kAfterConnect, Step::kAfterBegin, Step::kMidCopy, Step::kAfterCopy,
                    Step::kMidCommit}) {
    CAPTURE(step_name(step));
    int ready[2];
    REQUIRE(pipe2(ready, O_CLOEXEC) == 0);
    const pid_t writer = spawn([&] {
      lf_client_t *c = nullptr;
      if (lf_client_open(daemon.dir().c_str(), 5000, &c) != LF_OK) return 2;
      auto signal_parent = [&] {
        char b = 1;
        return write(ready[1], &b, 1) == 1;
      };
      if (step == Step::kAfterConnect) {
        signal_parent();
        pause();
      }
      lf_writer_t *w = nullptr;
      if (lf_client_begin_write(c, name.c_str(), 0, &w) != LF_OK) return 3;
      if (step == Step::kAfterBegin) {
        signal_parent();
        pause();
      }
      // Garbage, not the pattern: if any of it became visible, readers would see it torn.
      lf_tensor_view_t v;
      lf_writer_tensor(w, 0, &v);
      memset(v.data, 0xAB, v.nbytes);
      if (step == Step::kMidCopy) {
        signal_parent();
        pause();
      }
      for (size_t t = 1; t < 4; ++t) {
        lf_writer_tensor(w, t, &v);
        memset(v.data, 0xCD, v.nbytes);
      }
      if (step == Step::kAfterCopy) {
        signal_parent();
        pause();
      }
      // A commit the daemon receives is carried out whole, so this one writes a complete,
      // valid version: either it lands entirely or not at all.
      fill_pattern(w, version + 1);
      signal_parent();
      uint64_t ignored;
      lf_writer_commit(w, 0, &ignored);  // killed while this is on its way
      pause();
      return 0;
    });
    close(ready[1]);
    char b;
    REQUIRE(read(ready[0], &b, 1) == 1);
    close(ready[0]);
    kill(writer, SIGKILL);
    CHECK(wait_child(writer) == 128 + SIGKILL);

    // The slot comes back within the reaper's period, and the dead writer published nothing
    // (only a commit already on its way may land, and then whole: active_version checks every
    // word of what it pins).
    const int64_t waited = wait_until([&] { return census(client, name, "writing") == 0; }, 2000);
    CHECK(waited >= 0);
    const uint64_t now_active = active_version(daemon.dir(), name);
    if (step == Step::kMidCommit) {
      CHECK((now_active == version || now_active == version + 1));
      version = now_active;
    } else {
      CHECK(now_active == version);
    }
    // The slot is usable again: cycle through every slot several times.
    for (int i = 0; i < 6; ++i) version = publish(client, name, version + 1);
    CHECK(census(client, name, "abandoned") == 0);
  }
  lf_client_close(client);
}

TEST_CASE("a reader killed while holding a pin has it reclaimed within one second") {
  Daemon daemon("crash-reader");
  daemon.start();
  lf_client_t *client = nullptr;
  REQUIRE(lf_client_open(daemon.dir().c_str(), 5000, &client) == LF_OK);
  const std::string name = "pinned";
  REQUIRE(create_pattern_adapter(client, name, 2, 4096, 0) == LF_OK);  // 2 slots, no history
  publish(client, name, 1);

  int ready[2];
  REQUIRE(pipe2(ready, O_CLOEXEC) == 0);
  const pid_t reader = spawn([&] {
    lf_reader_t *r = nullptr;
    lf_adapter_ref_t ref = 0;
    lf_pin_t *pin = nullptr;
    if (lf_reader_open(daemon.dir().c_str(), &r) != LF_OK ||
        lf_reader_find(r, name.c_str(), &ref) != LF_OK ||
        lf_reader_acquire(r, ref, 0, &pin) != LF_OK)
      return 2;
    char b = 1;
    if (write(ready[1], &b, 1) != 1) return 3;
    pause();
    return 0;
  });
  close(ready[1]);
  char b;
  REQUIRE(read(ready[0], &b, 1) == 1);
  close(ready[0]);

  // With version 1 pinned and active, version 2 goes to the other slot; then version 1 leaves
  // the active word but its slot stays pinned, so a third write has no slot.
  publish(client, name, 2);
  lf_writer_t *w = nullptr;
  CHECK(lf_client_begin_write(client, name.c_str(), 0, &w) == LF_E_NO_FREE_SLOT);
  CHECK(census(client, name, "pinned") == 1);

  kill(reader, SIGKILL);
  CHECK(wait_child(reader) == 128 + SIGKILL);
  const uint64_t killed_at = now_ms();
  const int64_t waited = wait_until([&] { return census(client, name, "pinned") == 0; }, 3000);
  const uint64_t reclaimed_ms = now_ms() - killed_at;
  std::printf("crash: a dead reader's pin was reclaimed %llu ms after SIGKILL\n",
              (unsigned long long)reclaimed_ms);
  CHECK(waited >= 0);
  CHECK(reclaimed_ms < 1000);
  // Operators see it in the daemon's running totals.
  char *stats = nullptr;
  REQUIRE(lf_client_stats(client, &stats) == LF_OK);
  CHECK(json_number(stats, "dead_readers") == 1);
  CHECK(json_number(stats, "pins_cleared") == 1);
  lf_free(stats);
  publish(client, name, 3);
  lf_client_close(client);
}

TEST_CASE("a daemon killed under traffic restarts with the same active versions") {
  Daemon daemon("crash-daemon");
  daemon.start();
  lf_client_t *client = nullptr;
  REQUIRE(lf_client_open(daemon.dir().c_str(), 1000, &client) == LF_OK);
  const std::vector<std::string> names = {"alpha", "beta"};
  for (const auto &n : names) REQUIRE(create_pattern_adapter(client, n, 4, 16384, 2) == LF_OK);
  publish(client, "alpha", 1);
  publish(client, "beta", 1);

  // Readers keep reading through the whole kill and restart: they need shared memory only.
  int fds[2];
  REQUIRE(pipe2(fds, O_CLOEXEC) == 0);
  const int kReaders = 3;
  int stop_pipe[2];
  REQUIRE(pipe2(stop_pipe, O_CLOEXEC) == 0);
  std::vector<pid_t> readers;
  for (int i = 0; i < kReaders; ++i) {
    readers.push_back(spawn([&] {
      close(stop_pipe[1]);
      lf_reader_t *r = nullptr;
      if (lf_reader_open(daemon.dir().c_str(), &r) != LF_OK) return 2;
      lf_adapter_ref_t refs[2];
      for (int k = 0; k < 2; ++k)
        if (lf_reader_find(r, names[k].c_str(), &refs[k]) != LF_OK) return 3;
      uint64_t torn = 0, reads = 0;
      fcntl(stop_pipe[0], F_SETFL, O_NONBLOCK);
      char b;
      while (read(stop_pipe[0], &b, 1) != 0) {  // 0: the parent closed the pipe
        for (auto ref : refs) {
          lf_pin_t *pin = nullptr;
          if (lf_reader_acquire(r, ref, 0, &pin) != LF_OK) return 4;
          torn += count_torn(pin);
          lf_pin_release(pin);
          ++reads;
        }
      }
      lf_reader_close(r);
      uint64_t report[2] = {reads, torn};
      return write(fds[1], report, sizeof report) == sizeof report ? 0 : 5;
    }));
  }
  close(stop_pipe[0]);
  close(fds[1]);

  uint64_t next[2] = {2, 2};
  for (int round = 0; round < 3; ++round) {
    // Traffic on both adapters, then SIGKILL in the middle of it.
    for (int i = 0; i < 20; ++i)
      for (int k = 0; k < 2; ++k) next[k] = publish(client, names[k], next[k]) + 1;
    lf_writer_t *in_flight = begin_write_retrying(client, "alpha");
    fill_pattern(in_flight, next[0]);
    const uint64_t before[2] = {active_version(daemon.dir(), "alpha"),
                                active_version(daemon.dir(), "beta")};
    daemon.kill9();
    // No daemon: readers go on (their loop runs meanwhile); a commit cannot be answered.
    uint64_t v = 0;
    sleep_ms(100);
    daemon.start();
    CHECK(active_version(daemon.dir(), "alpha") == before[0]);
    CHECK(active_version(daemon.dir(), "beta") == before[1]);
    // The write that was in flight survives the restart: its lease lives in the arena.
    REQUIRE(lf_writer_commit(in_flight, 0, &v) == LF_OK);
    CHECK(v == next[0]);
    next[0] = v + 1;
    CHECK(daemon.log().find("re-attached") != std::string::npos);
  }
  close(stop_pipe[1]);
  uint64_t reads = 0, torn = 0, report[2];
  for (pid_t pid : readers) CHECK(wait_child(pid) == 0);
  while (read(fds[0], report, sizeof report) == sizeof report) {
    reads += report[0];
    torn += report[1];
  }
  std::printf("crash: 3 daemon kills under traffic; readers checked %llu versions, %llu torn words\n",
              (unsigned long long)reads, (unsigned long long)torn);
  CHECK(reads > 0);
  CHECK(torn == 0);
  lf_client_close(client);
}

TEST_CASE("a daemon refuses an arena of another layout with a clear message") {
  Daemon daemon("layout");
  daemon.start();
  daemon.kill9();
  // Corrupt the layout hash in the header, as a build with another layout would have made it.
  const std::string path = "/dev/shm/loraflip." + daemon.instance() + ".control";
  FILE *f = std::fopen(path.c_str(), "r+b");
  REQUIRE(f != nullptr);
  std::fseek(f, 16, SEEK_SET);  // ArenaHeader::layout_hash
  const uint64_t bogus = 0x1234;
  std::fwrite(&bogus, sizeof bogus, 1, f);
  std::fclose(f);
  const std::string cmd = daemon_path() + " --instance " + daemon.instance() + " --runtime-dir " +
                          daemon.dir() + " > " + daemon.dir() + ".refused 2>&1";
  const int status = std::system(cmd.c_str());
  CHECK(WEXITSTATUS(status) == 1);
  FILE *log = std::fopen((daemon.dir() + ".refused").c_str(), "r");
  REQUIRE(log != nullptr);
  char buf[4096] = {0};
  [[maybe_unused]] size_t n = std::fread(buf, 1, sizeof buf - 1, log);
  std::fclose(log);
  CHECK(std::string(buf).find("another memory layout") != std::string::npos);
  std::remove((daemon.dir() + ".refused").c_str());
}

TEST_CASE("a writer whose commits a daemon kill cuts off publishes again within a second of each restart") {
  Daemon daemon("crash-commit");
  daemon.start();
  lf_client_t *client = nullptr;
  REQUIRE(lf_client_open(daemon.dir().c_str(), 2000, &client) == LF_OK);
  // 4 MiB a version, every commit checksummed by the daemon: a commit takes long enough that
  // kills land in it.
  REQUIRE(create_pattern_adapter(client, "cut", 4, 262144, 1) == LF_OK);

  // The writer counts its published versions in shared memory; it does what a trainer does
  // with an unanswered call (loraflip.h): asks again, or begins again once the lease is gone.
  auto *published = static_cast<std::atomic<uint64_t> *>(
      mmap(nullptr, sizeof(std::atomic<uint64_t>), PROT_READ | PROT_WRITE,
           MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  REQUIRE(published != MAP_FAILED);
  new (published) std::atomic<uint64_t>(0);
  const pid_t writer = spawn([&] {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlives a failed test
    lf_client_t *c = nullptr;
    if (lf_client_open(daemon.dir().c_str(), 300, &c) != LF_OK) return 2;
    for (uint64_t generation = 1;; ++generation) {
      lf_writer_t *w = nullptr;
      if (lf_client_begin_write(c, "cut", 0, &w) != LF_OK) {
        sleep_ms(5);
        continue;
      }
      fill_pattern(w, generation);
      uint64_t v = 0;
      int rc = LF_E_TIMEOUT;
      while ((rc = lf_writer_commit(w, LF_COMMIT_CHECKSUM, &v)) == LF_E_TIMEOUT ||
             rc == LF_E_CONNECTION)
        sleep_ms(5);  // the outcome is unknown and w is still ours: ask again
      if (rc == LF_OK) published->fetch_add(1);
    }
  });

  std::mt19937 rng(7);
  int64_t slowest = 0;
  for (int round = 0; round < 8; ++round) {
    REQUIRE(wait_until([&] { return published->load() > 0; }, 5000) >= 0);
    sleep_ms(20 + static_cast<int>(rng() % 80));  // somewhere in the middle of a commit
    daemon.kill9();
    sleep_ms(50);
    const uint64_t before = published->load();
    daemon.start();
    const int64_t took = wait_until([&] { return published->load() > before; }, 3000);
    CAPTURE(round);
    CHECK(took >= 0);
    CHECK(took <= 1000);
    slowest = std::max(slowest, took);
    // Nothing is left behind for a writer that is still alive.
    CHECK(census(client, "cut", "abandoned") == 0);
    CHECK(census(client, "cut", "writing") <= 1);
  }
  std::printf("crash: 8 daemon kills during commits; the writer published again at most %lld ms "
              "after each restart\n", static_cast<long long>(slowest));
  ::kill(writer, SIGKILL);
  wait_child(writer);
  munmap(published, sizeof(std::atomic<uint64_t>));
  lf_client_close(client);
}

TEST_CASE("clients in another pid namespace are reclaimed when they die") {
  const char *ns_client = std::getenv("LF_NS_CLIENT");
  REQUIRE_MESSAGE(ns_client != nullptr, "set LF_NS_CLIENT to the lf_ns_client binary");
  if (std::system("unshare --pid --fork --kill-child true >/dev/null 2>&1") != 0)
    LF_SKIP("unshare --pid is not permitted here (needs root or user namespaces)");
  // Without --mount-proc the client sees the host's /proc, where its own pid (1 inside)
  // names init; with it, its /proc is its namespace's. Either way only the kernel's word
  // (the socket's credentials, in the daemon's namespace) names it to the daemon.
  for (const bool mount_proc : {false, true}) {
    CAPTURE(mount_proc);
    Daemon daemon(mount_proc ? "ns-proc" : "ns-host");
    daemon.start();
    lf_client_t *client = nullptr;
    REQUIRE(lf_client_open(daemon.dir().c_str(), 5000, &client) == LF_OK);
    REQUIRE(create_pattern_adapter(client, "contained", 1, 1024, 1) == LF_OK);
    publish(client, "contained", 1);

    int out[2];
    REQUIRE(pipe2(out, O_CLOEXEC) == 0);
    const pid_t unshare = fork();
    REQUIRE(unshare >= 0);
    if (unshare == 0) {
      ::dup2(out[1], STDOUT_FILENO);
      std::vector<const char *> args = {"unshare", "--pid", "--fork", "--kill-child"};
      if (mount_proc) args.push_back("--mount-proc");
      for (const char *a : {ns_client, daemon.dir().c_str(), "contained"}) args.push_back(a);
      args.push_back(nullptr);
      ::execvp("unshare", const_cast<char *const *>(args.data()));
      ::_exit(127);
    }
    ::close(out[1]);
    char line[64] = {0};
    const ssize_t n = ::read(out[0], line, sizeof line - 1);  // blocks until "ready" or exit
    ::close(out[0]);
    REQUIRE_MESSAGE(n > 0, "the contained client did not start (see stderr)");
    CHECK(std::string(line).rfind("ready", 0) == 0);
    CHECK(census(client, "contained", "pinned") == 1);
    CHECK(census(client, "contained", "writing") == 1);

    ::kill(unshare, SIGKILL);  // --kill-child: the namespace's init, and so all of it, dies
    wait_child(unshare);
    const int64_t took = wait_until([&] {
      return census(client, "contained", "pinned") == 0 &&
             census(client, "contained", "writing") == 0;
    }, 3000);
    CHECK(took >= 0);
    CHECK(took <= 1000);
    std::printf("crash: a client in its own pid namespace (%s /proc) reclaimed %lld ms after "
                "its death\n", mount_proc ? "its own" : "the host's", static_cast<long long>(took));
    lf_client_close(client);
  }
}
