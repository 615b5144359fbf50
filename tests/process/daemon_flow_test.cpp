// The daemon end to end with real clients: flips heard on the events socket and by futex
// waits, exact versions, rollback and drop under a pin; a subscriber that falls behind; a full
// reader table.
#include <doctest/doctest.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "support.hpp"
#include "tests/process/daemon_fixture.hpp"
#include "tests/skip.hpp"

using namespace lftest;
using namespace daemon_fixture;
namespace ipc = loraflip::ipc;

TEST_CASE("flip events, futex waits, rollback and drop work end to end") {
  Daemon daemon("flow");
  daemon.start();
  lf_client_t *client = nullptr;
  REQUIRE(lf_client_open(daemon.dir().c_str(), 5000, &client) == LF_OK);
  REQUIRE(create_pattern_adapter(client, "flow", 2, 1024, 2) == LF_OK);
  lf_events_t *events = nullptr;
  REQUIRE(lf_events_open(daemon.dir().c_str(), "flow", &events) == LF_OK);
  lf_reader_t *reader = nullptr;
  REQUIRE(lf_reader_open(daemon.dir().c_str(), &reader) == LF_OK);
  lf_adapter_ref_t ref = 0;
  REQUIRE(lf_reader_find(reader, "flow", &ref) == LF_OK);
  uint64_t v = 99;
  CHECK(lf_reader_wait(reader, ref, 0, 50, &v) == LF_E_TIMEOUT);
  sleep_ms(200);  // a SUB socket only hears what is published after it connected

  // A thread-free wait: the writer runs in a child and the futex wakes us.
  const pid_t writer = spawn([&] {
    lf_client_t *c = nullptr;
    if (lf_client_open(daemon.dir().c_str(), 5000, &c) != LF_OK) return 2;
    sleep_ms(100);
    for (float x : {1.0f, 2.0f, 3.0f}) publish_value(c, "flow", x);
    return 0;
  });
  REQUIRE(lf_reader_wait(reader, ref, 0, 5000, &v) == LF_OK);
  CHECK(v >= 1);
  CHECK(wait_child(writer) == 0);
  for (uint64_t expected = 1; expected <= 3; ++expected) {
    lf_event_t event;
    REQUIRE(lf_events_next_event(events, 2000, &event) == LF_OK);
    CHECK(std::string(event.adapter) == "flow");
    CHECK(event.version == expected);
  }

  // Exact versions from the history, and a rollback that keeps the version number.
  lf_pin_t *pin = nullptr;
  REQUIRE(lf_reader_acquire_version(reader, ref, 2, &pin) == LF_OK);
  lf_tensor_view_t view;
  lf_pin_tensor(pin, 0, &view);
  CHECK(static_cast<float *>(view.data)[0] == 2.0f);
  lf_pin_release(pin);
  REQUIRE(lf_client_rollback(client, "flow", 1) == LF_OK);
  REQUIRE(lf_reader_acquire(reader, ref, 0, &pin) == LF_OK);
  CHECK(lf_pin_version(pin) == 1);
  lf_pin_release(pin);
  REQUIRE(lf_reader_acquire(reader, ref, 2, &pin) == LF_OK);  // newest kept >= 2
  CHECK(lf_pin_version(pin) == 3);
  lf_pin_release(pin);
  CHECK(publish_value(client, "flow", 4.0f) == 4);  // numbered above every version so far
  char *info = nullptr;
  REQUIRE(lf_client_info(client, "flow", &info) == LF_OK);
  CHECK(json_number(info, "write_ns_total") > 0);  // commit latency is measured
  CHECK(json_number(info, "check_ns_total") > 0);
  lf_free(info);
  // The whole event: kind, both versions, the daemon's clock, and this adapter's numbering.
  lf_event_t event;
  REQUIRE(lf_events_next_event(events, 2000, &event) == LF_OK);
  CHECK(std::string(event.adapter) == "flow");
  CHECK(event.kind == LF_EVENT_ROLLBACK);
  CHECK(event.version == 1);
  CHECK(event.previous == 3);
  CHECK(event.seq == 4);  // after three commits
  CHECK(event.missed == 0);
  CHECK(event.unix_ns > 1700000000ull * 1000000000ull);
  REQUIRE(lf_events_next_event(events, 2000, &event) == LF_OK);
  CHECK(event.kind == LF_EVENT_COMMIT);
  CHECK(event.version == 4);
  CHECK(event.previous == 1);
  CHECK(event.seq == 5);

  // A pinned adapter that is dropped: new acquires fail at once, the pinned bytes stay.
  REQUIRE(lf_reader_acquire(reader, ref, 0, &pin) == LF_OK);
  REQUIRE(lf_client_drop_adapter(client, "flow") == LF_OK);
  lf_pin_t *again = nullptr;
  CHECK(lf_reader_acquire(reader, ref, 0, &again) == LF_E_STALE);
  lf_pin_tensor(pin, 0, &view);
  CHECK(static_cast<float *>(view.data)[0] == 4.0f);
  char *stats = nullptr;
  REQUIRE(lf_client_stats(client, &stats) == LF_OK);
  const int64_t used_while_pinned = json_number(stats, "data_used");
  lf_free(stats);
  CHECK(used_while_pinned > 0);
  // The reaper samples pins: this one, held across several passes, shows its age.
  sleep_ms(400);
  REQUIRE(lf_client_stats(client, &stats) == LF_OK);
  const std::string stats_text(stats);
  lf_free(stats);
  const size_t age_at = stats_text.find("\"oldest_pin_age_s\":");
  REQUIRE(age_at != std::string::npos);
  CHECK(std::strtod(stats_text.c_str() + age_at + 19, nullptr) >= 0.2);
  lf_pin_release(pin);
  REQUIRE(lf_events_next_event(events, 2000, &event) == LF_OK);
  CHECK(event.kind == LF_EVENT_DROP);
  CHECK(event.version == 0);
  CHECK(event.previous == 4);
  const int64_t freed = wait_until(
      [&] {
        char *s = nullptr;
        if (lf_client_stats(client, &s) != LF_OK) return false;
        const bool zero = json_number(s, "data_used") == 0;
        lf_free(s);
        return zero;
      },
      2000);
  CHECK(freed >= 0);
  lf_events_close(events);
  lf_reader_close(reader);
  lf_client_close(client);
}

TEST_CASE("a subscriber that falls behind is told how many events it missed") {
  Daemon daemon("missed");
  daemon.start();
  lf_client_t *client = nullptr;
  REQUIRE(lf_client_open(daemon.dir().c_str(), 5000, &client) == LF_OK);
  REQUIRE(create_pattern_adapter(client, "busy", 1, 16, 0) == LF_OK);
  lf_events_t *events = nullptr;
  REQUIRE(lf_events_open(daemon.dir().c_str(), "busy", &events) == LF_OK);
  sleep_ms(200);  // subscribed before the first publish
  // Far more flips than the sockets' queues (1000 messages each side by default) hold, with
  // nobody reading: the PUB socket drops the newest ones for this subscriber.
  constexpr uint64_t kFlips = 12000;
  for (uint64_t i = 0; i < kFlips; ++i) publish_value(client, "busy", static_cast<float>(i));
  uint64_t received = 0, missed = 0, last_seq = 0;
  lf_event_t e;
  auto drain = [&] {
    while (lf_events_next_event(events, 500, &e) == LF_OK) {
      ++received;
      missed += e.missed;
      CHECK(e.seq > last_seq);
      last_seq = e.seq;
    }
  };
  drain();
  CHECK(last_seq < kFlips);  // the queue filled up: some were dropped
  // A gap shows at the next event that gets through: one more flip, once the queue is empty.
  publish_value(client, "busy", -1.0f);
  drain();
  MESSAGE(received << " events received, " << missed << " reported missed");
  CHECK(last_seq == kFlips + 1);
  CHECK(missed > 0);
  CHECK(received + missed == kFlips + 1);  // every event either arrived or was counted
  char *stats = nullptr;
  REQUIRE(lf_client_stats(client, &stats) == LF_OK);
  CHECK(json_number(stats, "events") == static_cast<int64_t>(kFlips + 1));
  lf_free(stats);
  lf_events_close(events);
  lf_client_close(client);
}

TEST_CASE("a full reader table gives a clear error and frees up when a reader closes") {
  Daemon daemon("table", {"--max-readers", "3"});
  daemon.start();
  std::vector<lf_reader_t *> readers(3);
  for (auto &r : readers) REQUIRE(lf_reader_open(daemon.dir().c_str(), &r) == LF_OK);
  lf_reader_t *extra = nullptr;
  CHECK(lf_reader_open(daemon.dir().c_str(), &extra) == LF_E_TABLE_FULL);
  CHECK(std::string(lf_last_error_message()).find("--max-readers") != std::string::npos);
  lf_reader_close(readers[0]);
  CHECK(lf_reader_open(daemon.dir().c_str(), &extra) == LF_OK);
  lf_reader_close(extra);
  for (size_t i = 1; i < readers.size(); ++i) lf_reader_close(readers[i]);
}
