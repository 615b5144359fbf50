// The client library from many threads of one process at once, against a real daemon: one
// lf_client_t shared by a writer thread and two query threads (the header says a client may
// be used from several threads), four reader threads with a reader each, a thread blocked in
// lf_reader_wait and one on the events socket. Meant for ThreadSanitizer (scripts/sanitize
// runs it so) as much as for its own checks: no torn read, every call succeeds, versions in
// order.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <atomic>
#include <thread>
#include <vector>

#include "support.hpp"

using namespace lftest;

TEST_CASE("a shared client, reader threads, a waiter and an event listener work side by side") {
  Daemon daemon("threads");
  daemon.start();
  const std::string dir = daemon.dir();
  const std::string name = "threads";
  lf_client_t *client = nullptr;
  REQUIRE(lf_client_open(dir.c_str(), 5000, &client) == LF_OK);
  REQUIRE(create_pattern_adapter(client, name, 4, 4096, 2) == LF_OK);
  {
    lf_writer_t *w = nullptr;
    REQUIRE(lf_client_begin_write(client, name.c_str(), 0, &w) == LF_OK);
    fill_pattern(w, 1);
    REQUIRE(lf_writer_commit(w, 0, nullptr) == LF_OK);
  }

  constexpr uint64_t kVersions = 150;
  std::atomic<bool> done{false};
  std::atomic<uint64_t> failures{0}, torn{0}, reads{0}, queries{0}, events{0}, wakeups{0};

  std::thread writer([&] {
    for (uint64_t g = 2; g <= kVersions; ++g) {
      lf_writer_t *w = nullptr;
      int rc;
      while ((rc = lf_client_begin_write(client, name.c_str(), 0, &w)) == LF_E_NO_FREE_SLOT)
        std::this_thread::yield();
      if (rc != LF_OK) {
        failures.fetch_add(1);
        break;
      }
      fill_pattern(w, g);
      uint64_t version = 0;
      if (lf_writer_commit(w, 0, &version) != LF_OK || version != g) {
        failures.fetch_add(1);
        break;
      }
    }
    done.store(true);
  });

  std::vector<std::thread> threads;
  for (int q = 0; q < 2; ++q) {
    threads.emplace_back([&, q] {
      while (!done.load()) {
        char *json = nullptr;
        const int rc = q == 0 ? lf_client_stats(client, &json)
                              : lf_client_info(client, name.c_str(), &json);
        if (rc != LF_OK) failures.fetch_add(1);
        lf_free(json);
        queries.fetch_add(1);
      }
    });
  }
  // A reader of its own for one thread (readers are one thread at a time), or a failure counted.
  auto open_reader = [&](lf_reader_t **reader, lf_adapter_ref_t *ref) {
    if (lf_reader_open(dir.c_str(), reader) == LF_OK &&
        lf_reader_find(*reader, name.c_str(), ref) == LF_OK)
      return true;
    failures.fetch_add(1);
    lf_reader_close(*reader);
    return false;
  };
  for (int r = 0; r < 4; ++r) {
    threads.emplace_back([&] {
      lf_reader_t *reader = nullptr;
      lf_adapter_ref_t ref = 0;
      if (!open_reader(&reader, &ref)) return;
      uint64_t last = 0;
      while (!done.load()) {
        lf_pin_t *pin = nullptr;
        if (lf_reader_acquire(reader, ref, 0, &pin) != LF_OK) {
          failures.fetch_add(1);
          break;
        }
        torn.fetch_add(count_torn(pin));
        if (lf_pin_version(pin) < last) failures.fetch_add(1);
        last = lf_pin_version(pin);
        lf_pin_release(pin);
        reads.fetch_add(1);
      }
      lf_reader_close(reader);
    });
  }
  threads.emplace_back([&] {
    lf_reader_t *reader = nullptr;
    lf_adapter_ref_t ref = 0;
    if (!open_reader(&reader, &ref)) return;
    uint64_t seen = 1;
    while (!done.load()) {
      uint64_t now = 0;
      const int rc = lf_reader_wait(reader, ref, seen, 100, &now);
      if (rc == LF_OK) {
        if (now <= seen) failures.fetch_add(1);
        seen = now;
        wakeups.fetch_add(1);
      } else if (rc != LF_E_TIMEOUT) {
        failures.fetch_add(1);
      }
    }
    lf_reader_close(reader);
  });
  threads.emplace_back([&] {
    lf_events_t *ev = nullptr;
    if (lf_events_open(dir.c_str(), name.c_str(), &ev) != LF_OK) {
      failures.fetch_add(1);
      return;
    }
    while (!done.load()) {
      lf_event_t e;
      if (lf_events_next_event(ev, 50, &e) == LF_OK) events.fetch_add(1);
    }
    lf_events_close(ev);
  });

  writer.join();
  for (std::thread &t : threads) t.join();
  lf_client_close(client);

  MESSAGE(reads.load() << " reads, " << queries.load() << " queries, " << wakeups.load()
                       << " wake-ups, " << events.load() << " events");
  CHECK(failures.load() == 0);
  CHECK(torn.load() == 0);
  CHECK(reads.load() > 0);
  CHECK(queries.load() > 0);
  CHECK(wakeups.load() > 0);
}
