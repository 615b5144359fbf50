// Which GPU a device arena is, in every process: ordinals are per process
// (CUDA_VISIBLE_DEVICES; the host stand-in's LORAFLIP_HOST_VISIBLE_DEVICES), so the daemon
// publishes each arena's device uuid and a client maps it to its own ordinal, opens only the
// devices it uses and sees, and reports its own ordinals. And the mappings of a daemon that went
// are closed once no pin names them.
//
// Every device call of the library runs in a forked child: the library makes its stand-in
// backend once per process, reading LORAFLIP_HOST_VISIBLE_DEVICES then, so each child sets its
// own numbering after the fork, and this process never makes one (a child would inherit it).
#include <doctest/doctest.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <unistd.h>
#include <vector>

#include "support.hpp"

using namespace lftest;

namespace {

// In a child: a failed expectation says where and what, and ends the child with exit code 1.
#define EXPECT(cond)                                                                    \
  do {                                                                                  \
    if (!(cond)) {                                                                      \
      std::fprintf(stderr, "%s:%d: expected %s\n", __FILE__, __LINE__, #cond);          \
      return 1;                                                                         \
    }                                                                                   \
  } while (0)

constexpr int64_t kElements = 1024;  // one f32 tensor of 4 KiB per adapter

std::vector<std::string> arena_args(const char *devices) {
  return {"--devices", devices, "--device-backend", "host", "--device-arena-size", "4M"};
}

// The stand-in's shared-memory name of the daemon's arena on physical device `device`
// (device/device.hpp: "loraflip.<instance>.<tag>.dev<device>", when it fits a handle).
std::string arena_name(const Daemon &daemon, int device) {
  const std::string name = "loraflip." + daemon.instance() + ".arena.dev" + std::to_string(device);
  REQUIRE(name.size() < 40);  // else the stand-in hashes it
  return name;
}

// This process's mappings of shared memory `name`: those still named, or (`deleted`) those
// whose name is gone (a killed daemon's arena, removed by the daemon started after it).
int mappings(const std::string &name, bool deleted = false) {
  std::ifstream maps("/proc/self/maps");
  const std::string path = "/dev/shm/" + name;
  int n = 0;
  for (std::string line; std::getline(maps, line);) {
    const size_t at = line.find(path);
    if (at == std::string::npos) continue;
    const std::string rest = line.substr(at + path.size());
    if (deleted ? rest == " (deleted)" : rest.empty()) ++n;
  }
  return n;
}

// The shared-memory object that maps address `p` in this process ("" if none).
std::string mapped_object(const void *p) {
  std::ifstream maps("/proc/self/maps");
  const auto at = reinterpret_cast<uintptr_t>(p);
  for (std::string line; std::getline(maps, line);) {
    unsigned long long start = 0, end = 0;
    if (std::sscanf(line.c_str(), "%llx-%llx", &start, &end) != 2 || at < start || at >= end)
      continue;
    const size_t shm = line.find("/dev/shm/");
    return shm == std::string::npos ? "" : line.substr(shm + 9);
  }
  return "";
}

// Writes `x` into every element of `name` (through a copy: device memory) and commits.
// *device gets the writer's view.device. Prints the client's message on failure.
int write_value(lf_client_t *client, const char *name, float x, int *device = nullptr) {
  lf_writer_t *w = nullptr;
  int rc = lf_client_begin_write(client, name, 0, &w);
  if (rc != LF_OK) {
    std::fprintf(stderr, "begin_write '%s': %s\n", name, lf_client_last_error(client));
    return rc;
  }
  lf_tensor_view_t v;
  lf_writer_tensor(w, 0, &v);
  if (device != nullptr) *device = v.device;
  const std::vector<float> data(v.nbytes / 4, x);
  rc = lf_writer_copy_in(w, 0, data.data(), v.nbytes);
  if (rc != LF_OK) {
    std::fprintf(stderr, "copy_in '%s': %s\n", name, lf_client_last_error(client));
    lf_writer_abort(w);
    return rc;
  }
  rc = lf_writer_commit(w, LF_COMMIT_CHECK_FINITE, nullptr);
  if (rc != LF_OK) std::fprintf(stderr, "commit '%s': %s\n", name, lf_client_last_error(client));
  return rc;
}

// Whether every element of the view is `x`.
bool holds(const lf_tensor_view_t &v, float x) {
  const auto *p = static_cast<const float *>(v.data);
  for (uint64_t i = 0; i < v.nbytes / 4; ++i)
    if (p[i] != x) return false;
  return true;
}

// Pins the newest version of `name`; nullptr (and the reader's message printed) on failure,
// with the status in *rc.
lf_pin_t *pin_of(lf_reader_t *reader, const char *name, int *rc = nullptr) {
  lf_adapter_ref_t ref = 0;
  int status = lf_reader_find(reader, name, &ref);
  lf_pin_t *pin = nullptr;
  if (status == LF_OK) status = lf_reader_acquire(reader, ref, 0, &pin);
  if (rc != nullptr) *rc = status;
  if (status != LF_OK) {
    std::fprintf(stderr, "acquire '%s': %s\n", name, lf_reader_last_error(reader));
    return nullptr;
  }
  return pin;
}

lf_tensor_view_t view_of(const lf_pin_t *pin, int device = -1) {
  lf_tensor_view_t v{};
  if (device < 0)
    lf_pin_tensor(pin, 0, &v);
  else if (lf_pin_tensor_on_device(pin, 0, device, &v) != LF_OK)
    v.data = nullptr;
  return v;
}

void set_visible(const char *devices) { ::setenv("LORAFLIP_HOST_VISIBLE_DEVICES", devices, 1); }

// The version of `name`'s host copy, which a restarted daemon puts back on the devices.
int64_t restart_copy_version(lf_client_t *client, const char *name) {
  char *info = nullptr;
  if (lf_client_info(client, name, &info) != LF_OK) return -1;
  const std::string text(info);
  lf_free(info);
  const size_t at = text.find("\"restart_copy\"");
  return at == std::string::npos ? -1 : json_number(text.substr(at), "version");
}

int64_t writing(lf_client_t *client, const char *name) {
  char *info = nullptr;
  if (lf_client_info(client, name, &info) != LF_OK) return -1;
  const int64_t n = json_number(info, "writing");
  lf_free(info);
  return n;
}

}  // namespace

TEST_CASE("a client that sees only the daemon's device 1 uses it as its device 0 and is told "
          "clearly that device 0 is hidden") {
  Daemon daemon("vis", arena_args("0,1"));
  daemon.start();
  lf_client_t *setup = nullptr;
  REQUIRE(lf_client_open(daemon.dir().c_str(), 5000, &setup) == LF_OK);
  REQUIRE(create_pattern_adapter(setup, "on1", 1, kElements, 1, "cuda:1") == LF_OK);
  REQUIRE(create_pattern_adapter(setup, "on0", 1, kElements, 1, "cuda:0") == LF_OK);
  REQUIRE(create_pattern_adapter(setup, "both", 1, kElements, 1, "cuda:0,1") == LF_OK);

  // A process that sees every device writes what lives on the daemon's device 0 ("both" is
  // written there first).
  const pid_t sees_all = spawn([&] {
    lf_client_t *c = nullptr;
    EXPECT(lf_client_open(daemon.dir().c_str(), 5000, &c) == LF_OK);
    EXPECT(write_value(c, "on0", 0.5f) == LF_OK);
    EXPECT(write_value(c, "both", 3.5f) == LF_OK);
    lf_client_close(c);
    return 0;
  });
  CHECK(wait_child(sees_all) == 0);

  const std::string dev0 = arena_name(daemon, 0), dev1 = arena_name(daemon, 1);
  const pid_t sees_1 = spawn([&] {
    set_visible("1");
    lf_client_t *c = nullptr;
    EXPECT(lf_client_open(daemon.dir().c_str(), 5000, &c) == LF_OK);
    int device = -1;
    EXPECT(write_value(c, "on1", 1.5f, &device) == LF_OK);
    EXPECT(device == 0);  // the daemon's device 1 is this process's 0
    // The daemon's device 0 is not there: a clear refusal, for a replicated adapter too
    // (writers write to its first device).
    for (const char *hidden : {"on0", "both"}) {
      lf_writer_t *w = nullptr;
      EXPECT(lf_client_begin_write(c, hidden, 0, &w) == LF_E_UNSUPPORTED);
      const std::string why = lf_client_last_error(c);
      EXPECT(why.find("device 0") != std::string::npos);
      EXPECT(why.find("not visible") != std::string::npos);
    }
    // ... which breaks nothing for the device it sees.
    EXPECT(write_value(c, "on1", 2.5f, &device) == LF_OK);
    EXPECT(device == 0);

    lf_reader_t *r = nullptr;
    EXPECT(lf_reader_open(daemon.dir().c_str(), &r) == LF_OK);
    lf_pin_t *pin = pin_of(r, "on1");
    EXPECT(pin != nullptr);
    EXPECT(view_of(pin).device == 0);
    EXPECT(holds(view_of(pin), 2.5f));
    EXPECT(holds(view_of(pin, 0), 2.5f));
    EXPECT(view_of(pin, 1).data == nullptr);  // no ordinal 1 here
    lf_pin_release(pin);
    int rc = 0;
    EXPECT(pin_of(r, "on0", &rc) == nullptr);
    EXPECT(rc == LF_E_UNSUPPORTED);
    EXPECT(std::string(lf_reader_last_error(r)).find("device 0") != std::string::npos);
    // A replicated adapter whose first device is hidden is read from the copy it sees.
    pin = pin_of(r, "both");
    EXPECT(pin != nullptr);
    EXPECT(view_of(pin).device == 0);
    EXPECT(holds(view_of(pin), 3.5f));
    EXPECT(holds(view_of(pin, 0), 3.5f));
    EXPECT(view_of(pin, 1).data == nullptr);
    EXPECT(mapped_object(view_of(pin).data) == dev1);
    lf_pin_release(pin);
    // Only what it uses and sees is mapped, once for the client and the reader.
    EXPECT(mappings(dev1) == 1);
    EXPECT(mappings(dev0) == 0);
    lf_reader_close(r);
    lf_client_close(c);
    return 0;
  });
  CHECK(wait_child(sees_1) == 0);

  // The refused writes gave their leases back at once.
  CHECK(writing(setup, "on0") == 0);
  CHECK(writing(setup, "both") == 0);
  // The bytes are on the daemon's device 1, as a process with the default numbering sees it.
  const pid_t reads_all = spawn([&] {
    lf_reader_t *r = nullptr;
    EXPECT(lf_reader_open(daemon.dir().c_str(), &r) == LF_OK);
    lf_pin_t *pin = pin_of(r, "on1");
    EXPECT(pin != nullptr);
    EXPECT(view_of(pin).device == 1);
    EXPECT(holds(view_of(pin), 2.5f));
    EXPECT(mapped_object(view_of(pin).data) == dev1);
    lf_pin_release(pin);
    lf_reader_close(r);
    return 0;
  });
  CHECK(wait_child(reads_all) == 0);
  lf_client_close(setup);
}

TEST_CASE("a client with the devices in the other order reports its own ordinals and writes to "
          "the right device") {
  Daemon daemon("swap", arena_args("0,1"));
  daemon.start();
  lf_client_t *setup = nullptr;
  REQUIRE(lf_client_open(daemon.dir().c_str(), 5000, &setup) == LF_OK);
  REQUIRE(create_pattern_adapter(setup, "a0", 1, kElements, 1, "cuda:0") == LF_OK);
  REQUIRE(create_pattern_adapter(setup, "a1", 1, kElements, 1, "cuda:1") == LF_OK);
  REQUIRE(create_pattern_adapter(setup, "tp", 1, kElements, 1, "cuda:0,1") == LF_OK);
  lf_client_close(setup);
  const std::string dev0 = arena_name(daemon, 0), dev1 = arena_name(daemon, 1);

  const pid_t swapped = spawn([&] {
    set_visible("1,0");
    lf_client_t *c = nullptr;
    EXPECT(lf_client_open(daemon.dir().c_str(), 5000, &c) == LF_OK);
    int device = -1;
    EXPECT(write_value(c, "a0", 10.0f, &device) == LF_OK);
    EXPECT(device == 1);
    EXPECT(write_value(c, "a1", 11.0f, &device) == LF_OK);
    EXPECT(device == 0);
    EXPECT(write_value(c, "tp", 12.0f, &device) == LF_OK);
    EXPECT(device == 1);

    lf_reader_t *r = nullptr;
    EXPECT(lf_reader_open(daemon.dir().c_str(), &r) == LF_OK);
    lf_pin_t *pin = pin_of(r, "a0");
    EXPECT(pin != nullptr);
    EXPECT(view_of(pin).device == 1);
    EXPECT(holds(view_of(pin), 10.0f));
    EXPECT(mapped_object(view_of(pin).data) == dev0);  // physical device 0
    lf_pin_release(pin);
    pin = pin_of(r, "a1");
    EXPECT(pin != nullptr);
    EXPECT(view_of(pin).device == 0);
    EXPECT(mapped_object(view_of(pin).data) == dev1);
    lf_pin_release(pin);
    pin = pin_of(r, "tp");
    EXPECT(pin != nullptr);
    EXPECT(view_of(pin).device == 1);  // its first device, the daemon's 0
    EXPECT(view_of(pin, 0).device == 0);
    EXPECT(mapped_object(view_of(pin, 0).data) == dev1);
    EXPECT(mapped_object(view_of(pin, 1).data) == dev0);
    EXPECT(holds(view_of(pin, 0), 12.0f) && holds(view_of(pin, 1), 12.0f));
    lf_pin_release(pin);
    lf_reader_close(r);
    lf_client_close(c);
    return 0;
  });
  CHECK(wait_child(swapped) == 0);

  // Seen with the default numbering: each value is on the device it was placed on.
  const pid_t reads_all = spawn([&] {
    lf_reader_t *r = nullptr;
    EXPECT(lf_reader_open(daemon.dir().c_str(), &r) == LF_OK);
    lf_pin_t *pin = pin_of(r, "a0");
    EXPECT(pin != nullptr);
    EXPECT(view_of(pin).device == 0);
    EXPECT(holds(view_of(pin), 10.0f));
    EXPECT(mapped_object(view_of(pin).data) == dev0);
    lf_pin_release(pin);
    pin = pin_of(r, "a1");
    EXPECT(pin != nullptr);
    EXPECT(view_of(pin).device == 1);
    EXPECT(holds(view_of(pin), 11.0f));
    EXPECT(mapped_object(view_of(pin).data) == dev1);
    lf_pin_release(pin);
    pin = pin_of(r, "tp");
    EXPECT(pin != nullptr);
    EXPECT(holds(view_of(pin, 0), 12.0f) && holds(view_of(pin, 1), 12.0f));
    EXPECT(mapped_object(view_of(pin, 0).data) == dev0);
    lf_pin_release(pin);
    lf_reader_close(r);
    return 0;
  });
  CHECK(wait_child(reads_all) == 0);
}

TEST_CASE("after a daemon restart the old device memory is unmapped once no pin names it") {
  Daemon daemon("rst", arena_args("0,1"));
  daemon.start();
  lf_client_t *setup = nullptr;
  REQUIRE(lf_client_open(daemon.dir().c_str(), 5000, &setup) == LF_OK);
  REQUIRE(create_pattern_adapter(setup, "tp", 1, kElements, 1, "cuda:0,1") == LF_OK);
  REQUIRE(create_pattern_adapter(setup, "solo", 1, kElements, 1, "cuda:1") == LF_OK);
  lf_client_close(setup);
  const std::string dev0 = arena_name(daemon, 0), dev1 = arena_name(daemon, 1);

  int to_parent[2], to_child[2];
  REQUIRE(pipe(to_parent) == 0);
  REQUIRE(pipe(to_child) == 0);
  const pid_t child = spawn([&] {
    close(to_parent[0]);
    close(to_child[1]);
    lf_client_t *c = nullptr;
    EXPECT(lf_client_open(daemon.dir().c_str(), 20000, &c) == LF_OK);
    lf_reader_t *r = nullptr;
    EXPECT(lf_reader_open(daemon.dir().c_str(), &r) == LF_OK);
    EXPECT(write_value(c, "tp", 1.0f) == LF_OK);
    EXPECT(write_value(c, "solo", 1.0f) == LF_OK);
    lf_pin_t *old = pin_of(r, "tp");  // held across the restart
    EXPECT(old != nullptr);
    EXPECT(mappings(dev0) == 1 && mappings(dev1) == 1);
    // The daemon keeps a host copy of each version (after the flip's reply), from which the
    // next one puts "solo" back on its device.
    EXPECT(wait_until([&] { return restart_copy_version(c, "solo") == 1; }, 5000) >= 0);

    char b = 'r';
    EXPECT(write(to_parent[1], &b, 1) == 1);  // restart the daemon, please
    EXPECT(read(to_child[0], &b, 1) == 1);    // restarted

    // The new daemon removed the old arenas' names and made its own: this process still maps
    // the old memory (the pin), and nothing of the new yet.
    EXPECT(mappings(dev0, true) == 1 && mappings(dev1, true) == 1);
    EXPECT(mappings(dev0) == 0 && mappings(dev1) == 0);
    EXPECT(holds(view_of(old, 0), 1.0f) && holds(view_of(old, 1), 1.0f));

    // A write at the new epoch opens the new device 1 only; the reader's pin keeps the old.
    EXPECT(write_value(c, "solo", 2.0f) == LF_OK);
    lf_pin_t *fresh = pin_of(r, "solo");
    EXPECT(fresh != nullptr);
    EXPECT(holds(view_of(fresh), 2.0f));
    EXPECT(mappings(dev1) == 1 && mappings(dev0) == 0);
    EXPECT(mappings(dev0, true) == 1 && mappings(dev1, true) == 1);
    EXPECT(holds(view_of(old, 0), 1.0f) && holds(view_of(old, 1), 1.0f));

    // Released (a store into the pin cell, which needs no device memory), the old pin lets the
    // next acquire close the old blocks: what stays open is the new epoch's device in use.
    lf_pin_release(old);
    lf_pin_release(fresh);
    fresh = pin_of(r, "solo");
    EXPECT(fresh != nullptr);
    EXPECT(mappings(dev0, true) == 0 && mappings(dev1, true) == 0);
    EXPECT(mappings(dev1) == 1 && mappings(dev0) == 0);
    lf_pin_release(fresh);
    // The last handle closed, nothing stays mapped.
    lf_reader_close(r);
    lf_client_close(c);
    EXPECT(mappings(dev1) == 0);
    return 0;
  });
  close(to_parent[1]);
  close(to_child[0]);
  char b = 0;
  const bool asked = read(to_parent[0], &b, 1) == 1;
  CHECK(asked);
  if (asked) {
    daemon.kill9();
    daemon.start();
    REQUIRE(write(to_child[1], &b, 1) == 1);
  }
  close(to_parent[0]);
  close(to_child[1]);
  CHECK(wait_child(child) == 0);
}
