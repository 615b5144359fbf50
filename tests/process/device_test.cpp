// Device placement through the host implementation of the device interface (shared memory
// standing in for GPU memory): the whole path above the CUDA calls, across processes, with no
// GPU. tests/gpu/ runs the same library against real GPUs where one exists.
#include <doctest/doctest.h>

#include <csignal>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>
#include <fcntl.h>
#include <unistd.h>

#include "device/device.hpp"
#include "support.hpp"
#include "tests/skip.hpp"

using namespace lftest;

namespace {

// Two f32 tensors of 64 x 256 (values_of() fills one); slots 0: the daemon's default ring.
int create_device_adapter(lf_client_t *client, const char *name, const char *placement,
                          int slots = 0, int history = -1) {
  lf_spec_t *spec = nullptr;
  REQUIRE(lf_spec_new(&spec) == LF_OK);
  const int64_t shape[2] = {64, 256};
  for (const char *t : {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
                        "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"})
    REQUIRE(lf_spec_add_tensor(spec, t, LF_DTYPE_F32, 2, shape) == LF_OK);
  REQUIRE(lf_spec_set_placement(spec, placement) == LF_OK);
  if (slots != 0) REQUIRE(lf_spec_set_slots(spec, slots, history) == LF_OK);
  const int rc = lf_client_create_adapter(client, name, spec);
  lf_spec_free(spec);
  return rc;
}

std::vector<float> values_of(float x) { return std::vector<float>(64 * 256, x); }

// Writes x into both tensors of a create_device_adapter adapter and commits (finite check).
// The status of begin_write or commit; *version (may be NULL) gets the new version.
int publish_device(lf_client_t *client, const char *name, float x, uint64_t *version = nullptr) {
  lf_writer_t *w = nullptr;
  if (int rc = lf_client_begin_write(client, name, 0, &w); rc != LF_OK) return rc;
  const std::vector<float> data = values_of(x);
  for (size_t t = 0; t < 2; ++t)
    REQUIRE(lf_writer_copy_in(w, t, data.data(), data.size() * 4) == LF_OK);
  uint64_t v = 0;
  const int rc = lf_writer_commit(w, LF_COMMIT_CHECK_FINITE, &v);
  if (version != nullptr) *version = v;
  return rc;
}

// Mappings in this process of `bytes`-sized shared-memory blocks (the host stand-in maps a
// device arena of N bytes as N bytes of data after one page of its own header).
int block_mappings(uint64_t bytes) {
  std::ifstream maps("/proc/self/maps");
  std::string line;
  int n = 0;
  while (std::getline(maps, line)) {
    unsigned long long start = 0, end = 0;
    if (std::sscanf(line.c_str(), "%llx-%llx", &start, &end) == 2 && end - start == bytes + 4096 &&
        line.find("/dev/shm/") != std::string::npos)
      ++n;
  }
  return n;
}

}  // namespace

TEST_CASE("a version written to one device is copied to every device before the flip") {
  Daemon daemon("devices", {"--devices", "0,1", "--device-backend", "host", "--device-arena-size", "16M"});
  daemon.start();
  lf_client_t *client = nullptr;
  REQUIRE(lf_client_open(daemon.dir().c_str(), 5000, &client) == LF_OK);
  REQUIRE(create_device_adapter(client, "tp", "cuda:0,1") == LF_OK);
  char *info = nullptr;
  REQUIRE(lf_client_info(client, "tp", &info) == LF_OK);
  CHECK(std::string(info).find("\"placement\":\"cuda:0,1\"") != std::string::npos);
  lf_free(info);

  lf_reader_t *reader = nullptr;
  REQUIRE(lf_reader_open(daemon.dir().c_str(), &reader) == LF_OK);
  lf_adapter_ref_t ref = 0;
  REQUIRE(lf_reader_find(reader, "tp", &ref) == LF_OK);

  for (float x : {1.5f, 2.5f, 3.5f, 4.5f, 5.5f}) {
    lf_writer_t *w = nullptr;
    REQUIRE(lf_client_begin_write(client, "tp", 0, &w) == LF_OK);
    lf_tensor_view_t view;
    REQUIRE(lf_writer_tensor(w, 0, &view) == LF_OK);
    CHECK(view.device == 0);
    const std::vector<float> data = values_of(x);
    REQUIRE(lf_writer_copy_in_async(w, 0, data.data(), view.nbytes, -1, nullptr) == LF_OK);
    REQUIRE(lf_writer_copy_in(w, 1, data.data(), view.nbytes) == LF_OK);
    uint64_t version = 0;
    REQUIRE(lf_writer_commit(w, LF_COMMIT_CHECK_FINITE, &version) == LF_OK);

    lf_pin_t *pin = nullptr;
    REQUIRE(lf_reader_acquire(reader, ref, version, &pin) == LF_OK);
    for (int device : {0, 1}) {
      for (size_t t = 0; t < 2; ++t) {
        lf_tensor_view_t v;
        REQUIRE(lf_pin_tensor_on_device(pin, t, device, &v) == LF_OK);
        CHECK(v.device == device);
        CHECK(std::memcmp(v.data, data.data(), v.nbytes) == 0);
      }
    }
    lf_tensor_view_t none;
    CHECK(lf_pin_tensor_on_device(pin, 0, 7, &none) == LF_E_NOT_FOUND);
    lf_pin_release(pin);
  }
  // Each device arena was opened once by this process, however many writes and pins used it.
  CHECK(block_mappings(16u << 20) == 2);
  lf_reader_close(reader);
  lf_client_close(client);
}

TEST_CASE("a commit waits for the writer's device copies without blocking the daemon") {
  Daemon daemon("events", {"--devices", "0", "--device-backend", "host", "--device-arena-size", "16M"});
  daemon.start();
  lf_client_t *client = nullptr;
  REQUIRE(lf_client_open(daemon.dir().c_str(), 5000, &client) == LF_OK);
  REQUIRE(create_device_adapter(client, "slow", "cuda:0") == LF_OK);
  REQUIRE(create_pattern_adapter(client, "other", 1, 1024, 1) == LF_OK);

  // The writer's copies sit on a stream stuck behind other work (a paused host stream), then
  // the writer is killed: its commit must never complete, and never hold up anyone else.
  int ready[2];
  REQUIRE(pipe2(ready, O_CLOEXEC) == 0);
  const pid_t writer = spawn([&] {
    lf_client_t *c = nullptr;
    if (lf_client_open(daemon.dir().c_str(), 20000, &c) != LF_OK) return 2;
    auto backend = loraflip::device::make_host_backend("writer");
    auto stream = backend->create_stream(0);
    if (!stream) return 3;
    loraflip::device::host_pause_stream(stream.value(), true);
    lf_writer_t *w = nullptr;
    if (lf_client_begin_write(c, "slow", 0, &w) != LF_OK) return 4;
    const std::vector<float> data = values_of(9.0f);
    if (lf_writer_copy_in_async(w, 0, data.data(), data.size() * 4, -1, stream.value()) != LF_OK) return 5;
    char b = 1;
    if (write(ready[1], &b, 1) != 1) return 6;
    uint64_t v = 0;
    lf_writer_commit(w, 0, &v);  // waits for a reply that the parent's SIGKILL cuts short
    return 7;
  });
  close(ready[1]);
  char b;
  REQUIRE(read(ready[0], &b, 1) == 1);
  close(ready[0]);
  sleep_ms(300);  // the commit is now waiting inside the daemon

  // Meanwhile the daemon serves everyone else.
  const uint64_t t0 = now_ms();
  lf_writer_t *w = nullptr;
  REQUIRE(lf_client_begin_write(client, "other", 0, &w) == LF_OK);
  fill_pattern(w, 1);
  uint64_t v = 0;
  REQUIRE(lf_writer_commit(w, 0, &v) == LF_OK);
  CHECK(v == 1);
  CHECK(now_ms() - t0 < 1000);

  kill(writer, SIGKILL);
  CHECK(wait_child(writer) == 128 + SIGKILL);
  // The dead writer's commit is given up and its slot comes back; nothing was published.
  const int64_t waited = wait_until(
      [&] {
        char *info = nullptr;
        if (lf_client_info(client, "slow", &info) != LF_OK) return false;
        const std::string s(info);
        lf_free(info);
        return json_number(s, "writing") == 0 && json_number(s, "version") == 0;
      },
      2000);
  CHECK(waited >= 0);
  lf_writer_t *again = nullptr;
  REQUIRE(lf_client_begin_write(client, "slow", 0, &again) == LF_OK);
  REQUIRE(lf_writer_abort(again) == LF_OK);

  // A live writer whose copies finish 300 ms after it asks to commit: the commit completes,
  // and the wait is counted apart from the writer's own time.
  auto backend = loraflip::device::make_host_backend("writer");
  auto stream = backend->create_stream(0);
  REQUIRE(stream);
  loraflip::device::host_pause_stream(stream.value(), true);
  REQUIRE(lf_client_begin_write(client, "slow", 0, &w) == LF_OK);
  const std::vector<float> data = values_of(5.0f);
  REQUIRE(lf_writer_copy_in_async(w, 0, data.data(), data.size() * 4, -1, stream.value()) == LF_OK);
  std::thread resume([&] {
    sleep_ms(300);
    loraflip::device::host_pause_stream(stream.value(), false);
  });
  REQUIRE(lf_writer_commit(w, 0, &v) == LF_OK);
  resume.join();
  char *info = nullptr;
  REQUIRE(lf_client_info(client, "slow", &info) == LF_OK);
  CHECK(json_number(info, "event_waits") == 1);
  CHECK(json_number(info, "event_wait_ns_total") >= 250000000);
  CHECK(json_number(info, "write_ns_total") < 250000000);
  lf_free(info);
  lf_client_close(client);
}

TEST_CASE("a pin released after a stream's work stays held until that work is done") {
  Daemon daemon("relafter", {"--devices", "0", "--device-backend", "host", "--device-arena-size", "16M"});
  daemon.start();
  lf_client_t *client = nullptr;
  REQUIRE(lf_client_open(daemon.dir().c_str(), 5000, &client) == LF_OK);
  // Two slots, no history: a slot comes back only when neither active nor pinned.
  REQUIRE(create_device_adapter(client, "gen", "cuda:0", 2, 0) == LF_OK);
  auto publish = [&](float x) { return publish_device(client, "gen", x); };
  auto pinned_slots = [&] {
    char *info = nullptr;
    REQUIRE(lf_client_info(client, "gen", &info) == LF_OK);
    const int64_t n = json_number(info, "pinned");
    lf_free(info);
    return n;
  };
  REQUIRE(publish(1.0f) == LF_OK);

  lf_reader_t *reader = nullptr;
  REQUIRE(lf_reader_open(daemon.dir().c_str(), &reader) == LF_OK);
  lf_adapter_ref_t ref = 0;
  REQUIRE(lf_reader_find(reader, "gen", &ref) == LF_OK);
  // The generation loop's stream, stuck behind earlier kernels (a paused stand-in stream).
  auto backend = loraflip::device::make_host_backend("reader");
  auto stream = backend->create_stream(0);
  REQUIRE(stream);
  loraflip::device::host_pause_stream(stream.value(), true);

  lf_pin_t *pin = nullptr;
  REQUIRE(lf_reader_acquire(reader, ref, 0, &pin) == LF_OK);
  REQUIRE(lf_pin_release_after(pin, -1, stream.value()) == LF_OK);
  // Version 2 takes the other slot; version 1's slot is still pinned for the queued work, so
  // a third write has nowhere to go, however often the reader looks.
  REQUIRE(publish(2.0f) == LF_OK);
  size_t pending = 0;
  REQUIRE(lf_reader_release_completed(reader, &pending) == LF_OK);
  CHECK(pending == 1);
  lf_pin_t *other = nullptr;
  REQUIRE(lf_reader_acquire(reader, ref, 0, &other) == LF_OK);  // checks the pending one too
  lf_pin_release(other);
  sleep_ms(300);  // several reaper passes: the pin is a live process's, nothing reclaims it
  CHECK(pinned_slots() == 1);
  CHECK(publish(3.0f) == LF_E_NO_FREE_SLOT);

  // The work completes: the next look releases the pin, and the slot is the writer's again.
  loraflip::device::host_pause_stream(stream.value(), false);
  CHECK(wait_until([&] {
          size_t left = 1;
          return lf_reader_release_completed(reader, &left) == LF_OK && left == 0;
        }, 2000) >= 0);
  CHECK(pinned_slots() == 0);
  CHECK(publish(3.0f) == LF_OK);

  // A host-memory pin needs the stream's device named; refused, the pin is still held.
  REQUIRE(create_pattern_adapter(client, "hostside", 1, 64, 0) == LF_OK);
  lf_writer_t *w = nullptr;
  REQUIRE(lf_client_begin_write(client, "hostside", 0, &w) == LF_OK);
  fill_pattern(w, 1);
  uint64_t v = 0;
  REQUIRE(lf_writer_commit(w, 0, &v) == LF_OK);
  lf_adapter_ref_t host_ref = 0;
  REQUIRE(lf_reader_find(reader, "hostside", &host_ref) == LF_OK);
  REQUIRE(lf_reader_acquire(reader, host_ref, 0, &pin) == LF_OK);
  CHECK(lf_pin_release_after(pin, -1, stream.value()) == LF_E_INVALID_ARGUMENT);
  CHECK(lf_pin_version(pin) == 1);
  CHECK(lf_pin_release_after(pin, 0, stream.value()) == LF_OK);

  // Closing waits for the work behind a pending release before it lets the pins go.
  loraflip::device::host_pause_stream(stream.value(), true);
  REQUIRE(lf_reader_acquire(reader, ref, 0, &pin) == LF_OK);
  REQUIRE(lf_pin_release_after(pin, 0, stream.value()) == LF_OK);
  std::thread resume([&] {
    sleep_ms(300);
    loraflip::device::host_pause_stream(stream.value(), false);
  });
  const uint64_t t0 = now_ms();
  lf_reader_close(reader);
  CHECK(now_ms() - t0 >= 250);
  resume.join();
  backend->destroy_stream(0, stream.value());
  lf_client_close(client);
}

TEST_CASE("without devices, device placements are refused clearly and host ones still work") {
  Daemon daemon("nodev");
  daemon.start();
  lf_client_t *client = nullptr;
  REQUIRE(lf_client_open(daemon.dir().c_str(), 5000, &client) == LF_OK);
  CHECK(create_device_adapter(client, "gpu", "cuda:0") == LF_E_UNSUPPORTED);
  CHECK(std::string(lf_client_last_error(client)).find("--devices") != std::string::npos);
  CHECK(create_device_adapter(client, "bad", "cuda:x") == LF_E_INVALID_ARGUMENT);
  CHECK(create_device_adapter(client, "cpu", "host") == LF_OK);
  lf_client_close(client);
}

TEST_CASE("a daemon asked for a CUDA device that does not work starts, says why and serves host "
          "memory") {
  Daemon nogpu("nogpu", {"--devices", "0"});
  nogpu.start();
  lf_client_t *client = nullptr;
  REQUIRE(lf_client_open(nogpu.dir().c_str(), 5000, &client) == LF_OK);
  const int rc = create_device_adapter(client, "gpu", "cuda:0");
  if (rc == LF_OK) {
    lf_client_close(client);
    LF_SKIP("CUDA device 0 works here (an adapter was placed on it): no refusal to check");
  }
  CHECK(rc == LF_E_UNSUPPORTED);
  CHECK(nogpu.log().find("device placement unavailable") != std::string::npos);
  CHECK(create_device_adapter(client, "cpu", "host") == LF_OK);
  lf_client_close(client);
}

TEST_CASE("a killed daemon's device adapters come back from their host copies") {
  Daemon daemon("devrestart", {"--devices", "0,1", "--device-backend", "host",
                               "--device-arena-size", "16M"});
  daemon.start();
  lf_client_t *client = nullptr;
  REQUIRE(lf_client_open(daemon.dir().c_str(), 5000, &client) == LF_OK);
  REQUIRE(create_device_adapter(client, "tp", "cuda:1,0") == LF_OK);  // written on device 1
  REQUIRE(create_device_adapter(client, "fresh", "cuda:0") == LF_OK);  // never published
  REQUIRE(create_pattern_adapter(client, "onhost", 1, 1024, 1) == LF_OK);
  auto publish = [&](const char *name, float x) {
    uint64_t v = 0;
    REQUIRE(publish_device(client, name, x, &v) == LF_OK);
    return v;
  };
  for (float x : {1.0f, 2.0f, 3.0f}) publish("tp", x);
  lf_writer_t *w = nullptr;
  REQUIRE(lf_client_begin_write(client, "onhost", 0, &w) == LF_OK);
  fill_pattern(w, 1);
  REQUIRE(lf_writer_commit(w, 0, nullptr) == LF_OK);
  // The host copy follows each flip, right after the reply.
  auto info_number = [&](const char *name, const char *key) {
    char *info = nullptr;
    if (lf_client_info(client, name, &info) != LF_OK) return int64_t{-1};
    const std::string text(info);
    lf_free(info);
    const size_t at = text.find("\"restart_copy\"");
    return at == std::string::npos ? int64_t{-1} : json_number(text.substr(at), key);
  };
  CHECK(wait_until([&] { return info_number("tp", "version") == 3; }, 2000) >= 0);
  CHECK(info_number("tp", "bytes") > 0);
  lf_client_close(client);

  daemon.kill9();
  daemon.start();
  REQUIRE(lf_client_open(daemon.dir().c_str(), 5000, &client) == LF_OK);
  char *list = nullptr;
  REQUIRE(lf_client_list(client, &list) == LF_OK);
  const std::string listed(list);
  lf_free(list);
  CHECK(listed.find("\"name\":\"tp\",\"version\":3") != std::string::npos);
  CHECK(listed.find("fresh") == std::string::npos);  // nothing to put back
  CHECK(listed.find("\"name\":\"onhost\",\"version\":1") != std::string::npos);
  CHECK(daemon.log().find("'tp': version 3 put back on its devices") != std::string::npos);
  CHECK(daemon.log().find("'fresh' lived in device memory") != std::string::npos);

  // Version 3, whole, on both devices; the older versions were not kept; numbering goes on.
  lf_reader_t *reader = nullptr;
  REQUIRE(lf_reader_open(daemon.dir().c_str(), &reader) == LF_OK);
  lf_adapter_ref_t ref = 0;
  REQUIRE(lf_reader_find(reader, "tp", &ref) == LF_OK);
  lf_pin_t *pin = nullptr;
  REQUIRE(lf_reader_acquire(reader, ref, 0, &pin) == LF_OK);
  CHECK(lf_pin_version(pin) == 3);
  const std::vector<float> three = values_of(3.0f);
  for (int device : {0, 1}) {
    for (size_t t = 0; t < 2; ++t) {
      lf_tensor_view_t v;
      REQUIRE(lf_pin_tensor_on_device(pin, t, device, &v) == LF_OK);
      CHECK(std::memcmp(v.data, three.data(), v.nbytes) == 0);
    }
  }
  lf_pin_release(pin);
  CHECK(lf_reader_acquire_version(reader, ref, 2, &pin) == LF_E_NO_VERSION);
  CHECK(publish("tp", 4.0f) == 4);
  REQUIRE(lf_reader_acquire(reader, ref, 4, &pin) == LF_OK);
  lf_tensor_view_t v;
  REQUIRE(lf_pin_tensor_on_device(pin, 1, 0, &v) == LF_OK);
  CHECK(static_cast<const float *>(v.data)[0] == 4.0f);
  lf_pin_release(pin);
  lf_reader_close(reader);
  lf_client_close(client);
}

TEST_CASE("lf_writer_copy_in_all copies a large slot in runs on several threads, byte for byte") {
  // 96 tensors of 128 KiB (12 MiB, above ipc::kParallelBytes), each with its own values, and a
  // second write that leaves every third tensor as it was (NULL source): every byte must land
  // where its tensor is, whichever run copied it.
  Daemon daemon("copy-runs", {"--arena-size", "128M"});
  daemon.start();
  lf_client_t *client = nullptr;
  REQUIRE(lf_client_open(daemon.dir().c_str(), 5000, &client) == LF_OK);
  constexpr size_t kTensors = 96;
  const int64_t shape[2] = {32, 1024};
  const size_t bytes = 32 * 1024 * sizeof(float);
  lf_spec_t *spec = nullptr;
  REQUIRE(lf_spec_new(&spec) == LF_OK);
  for (size_t t = 0; t < kTensors; ++t) {
    const std::string name = "base_model.model.model.layers." + std::to_string(t / 2) +
                             ".self_attn.q_proj.lora_" + (t % 2 ? "B" : "A") + ".weight";
    REQUIRE(lf_spec_add_tensor(spec, name.c_str(), LF_DTYPE_F32, 2, shape) == LF_OK);
  }
  REQUIRE(lf_client_create_adapter(client, "runs", spec) == LF_OK);
  lf_spec_free(spec);
  auto values = [&](size_t t, float round) {
    std::vector<float> v(bytes / sizeof(float));
    for (size_t i = 0; i < v.size(); ++i) v[i] = round * 1000.0f + float(t) + float(i % 97) / 128.0f;
    return v;
  };
  std::vector<std::vector<float>> first, second;
  std::vector<const void *> srcs(kTensors), partial(kTensors);
  std::vector<size_t> sizes(kTensors, bytes);
  for (size_t t = 0; t < kTensors; ++t) {
    first.push_back(values(t, 1));
    second.push_back(values(t, 2));
    srcs[t] = first[t].data();
    partial[t] = t % 3 == 0 ? nullptr : second[t].data();
  }
  lf_writer_t *w = nullptr;
  REQUIRE(lf_client_begin_write(client, "runs", 0, &w) == LF_OK);
  REQUIRE(lf_writer_copy_in_all(w, srcs.data(), sizes.data()) == LF_OK);
  REQUIRE(lf_writer_copy_in_all(w, partial.data(), sizes.data()) == LF_OK);
  uint64_t version = 0;
  REQUIRE(lf_writer_commit(w, LF_COMMIT_CHECK_FINITE | LF_COMMIT_CHECKSUM, &version) == LF_OK);
  lf_reader_t *reader = nullptr;
  REQUIRE(lf_reader_open(daemon.dir().c_str(), &reader) == LF_OK);
  lf_adapter_ref_t ref = 0;
  REQUIRE(lf_reader_find(reader, "runs", &ref) == LF_OK);
  lf_pin_t *pin = nullptr;
  REQUIRE(lf_reader_acquire(reader, ref, version, &pin) == LF_OK);
  for (size_t t = 0; t < kTensors; ++t) {
    CAPTURE(t);
    lf_tensor_view_t v;
    REQUIRE(lf_pin_tensor(pin, t, &v) == LF_OK);
    const std::vector<float> &want = t % 3 == 0 ? first[t] : second[t];
    CHECK(std::memcmp(v.data, want.data(), bytes) == 0);
  }
  lf_pin_release(pin);
  lf_reader_close(reader);
  lf_client_close(client);
}

TEST_CASE("lf_writer_copy_in_all copies every tensor in one call, checking every size first") {
  Daemon daemon("copy-all", {"--devices", "0", "--device-backend", "host", "--device-arena-size", "16M"});
  daemon.start();
  lf_client_t *client = nullptr;
  REQUIRE(lf_client_open(daemon.dir().c_str(), 5000, &client) == LF_OK);
  lf_reader_t *reader = nullptr;
  REQUIRE(lf_reader_open(daemon.dir().c_str(), &reader) == LF_OK);
  for (const char *placement : {"host", "cuda:0"}) {
    CAPTURE(placement);
    const std::string name = std::string("copy-all-") + (placement[0] == 'h' ? "host" : "device");
    REQUIRE(create_device_adapter(client, name.c_str(), placement) == LF_OK);
    REQUIRE(publish_device(client, name.c_str(), 1.0f) == LF_OK);  // version 1: all ones
    const std::vector<float> twos = values_of(2.0f), threes = values_of(3.0f);
    const size_t bytes = twos.size() * 4;
    lf_writer_t *w = nullptr;
    REQUIRE(lf_client_begin_write(client, name.c_str(), 0, &w) == LF_OK);
    // A wrong size anywhere: refused before any byte moves.
    const void *srcs[] = {twos.data(), threes.data()};
    const size_t wrong[] = {bytes, bytes - 4};
    CHECK(lf_writer_copy_in_all(w, srcs, wrong) == LF_E_INVALID_ARGUMENT);
    lf_tensor_view_t view;
    REQUIRE(lf_writer_tensor(w, 0, &view) == LF_OK);
    if (view.device < 0) {  // a host slot can be looked at through the view
      float first = 0;
      std::memcpy(&first, view.data, 4);
      CHECK(first != 2.0f);
    }
    const size_t sizes[] = {bytes, bytes};
    REQUIRE(lf_writer_copy_in_all(w, srcs, sizes) == LF_OK);
    // NULL leaves a tensor as it is: tensor 1 keeps threes.
    const void *only_first[] = {threes.data(), nullptr};
    REQUIRE(lf_writer_copy_in_all(w, only_first, sizes) == LF_OK);
    uint64_t version = 0;
    REQUIRE(lf_writer_commit(w, LF_COMMIT_CHECK_FINITE, &version) == LF_OK);
    lf_adapter_ref_t ref = 0;
    REQUIRE(lf_reader_find(reader, name.c_str(), &ref) == LF_OK);
    lf_pin_t *pin = nullptr;
    REQUIRE(lf_reader_acquire(reader, ref, version, &pin) == LF_OK);
    for (size_t t = 0; t < 2; ++t) {
      lf_tensor_view_t v;
      REQUIRE(lf_pin_tensor(pin, t, &v) == LF_OK);
      CHECK(std::memcmp(v.data, threes.data(), v.nbytes) == 0);  // the stand-in maps device memory
    }
    lf_pin_release(pin);
  }
  lf_reader_close(reader);
  lf_client_close(client);
}
