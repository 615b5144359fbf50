// loraflip-relay with device placements on both sides, through the host stand-in of the device
// interface (shared memory standing in for GPU memory, as tests/process/device_test.cpp): the
// upstream's adapters on a device and on the host, followers that place them on their devices
// or on the host. And what the relay stands on in the C API: a pin's whole slot image copied
// out (lf_pin_copy_slot), and a writer's slot written whole from one (lf_writer_copy_in_slot).
//
// lftest::count_torn (and so Watch) reads a pin's views directly: under the stand-in a device
// view is shared memory this process maps, so it works for device pins here (not on a GPU).
// Bytes are compared through lf_pin_copy_slot, which works on both.
#include <doctest/doctest.h>

#include <cstddef>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "kernels/validate.hpp"
#include "loraflip.h"
#include "relay_support.hpp"
#include "support.hpp"

using namespace lftest::relay;

namespace {

// A daemon with two stand-in GPUs of 64 MiB each.
const std::vector<std::string> kTwoDevices = {"--device-backend", "host", "--devices", "0,1",
                                              "--device-arena-size", "64M"};

// Tensor `index` of the writer's slot filled with lftest's pattern of `version` (the words
// count_torn checks), `*word` being the number of the pattern's first word in it.
std::vector<uint64_t> pattern_tensor(lf_writer_t *w, size_t index, uint64_t version,
                                     uint64_t *word) {
  lf_tensor_view_t v{};
  REQUIRE(lf_writer_tensor(w, index, &v) == LF_OK);
  std::vector<uint64_t> words(v.nbytes / 8);
  for (uint64_t &x : words) x = lftest::pattern_word(version, (*word)++);
  return words;
}

// The whole slot image of `version`: every tensor holds the pattern, the padding between them
// `padding` bytes (not what a fresh slot holds, so that a copy that skips it shows).
std::vector<std::byte> pattern_image(lf_writer_t *w, uint64_t version, unsigned char padding) {
  std::vector<std::byte> image(lf_writer_slot_bytes(w), std::byte{padding});
  lf_tensor_view_t first{};
  REQUIRE(lf_writer_tensor(w, 0, &first) == LF_OK);  // the slot's first tensor is at offset 0
  uint64_t word = 0;
  for (size_t t = 0; t < lf_writer_tensor_count(w); ++t) {
    lf_tensor_view_t v{};
    REQUIRE(lf_writer_tensor(w, t, &v) == LF_OK);
    const std::vector<uint64_t> words = pattern_tensor(w, t, version, &word);
    const auto offset = static_cast<size_t>(static_cast<std::byte *>(v.data) -
                                            static_cast<std::byte *>(first.data));
    std::memcpy(image.data() + offset, words.data(), v.nbytes);
  }
  return image;
}

// A trainer's commit of generation `g`, padding included (a byte that differs per version, so
// that a follower that loses padding shows); a host slot is checksummed, a device slot not
// (lf_writer_commit checksums host memory only).
uint64_t publish_pattern(lf_client_t *c, const char *name, uint64_t g) {
  lf_writer_t *w = nullptr;
  REQUIRE_MESSAGE(lf_client_begin_write(c, name, 0, &w) == LF_OK, lf_client_last_error(c));
  lf_tensor_view_t first{};
  REQUIRE(lf_writer_tensor(w, 0, &first) == LF_OK);
  const std::vector<std::byte> image = pattern_image(w, g, static_cast<unsigned char>(0x40 + g));
  REQUIRE(lf_writer_copy_in_slot(w, image.data(), image.size()) == LF_OK);
  uint64_t v = 0;
  const int st = lf_writer_commit(w, first.device < 0 ? LF_COMMIT_CHECKSUM : 0u, &v);
  REQUIRE_MESSAGE(st == LF_OK, lf_client_last_error(c));
  return v;
}

// The slot image of `name`@`version` on daemon `d` (empty when it cannot be pinned).
std::vector<std::byte> slot_image(const Daemon &d, const char *name, uint64_t version) {
  lf_reader_t *r = nullptr;
  REQUIRE(lf_reader_open(d.dir().c_str(), &r) == LF_OK);
  std::vector<std::byte> image;
  lf_adapter_ref_t ref = 0;
  lf_pin_t *pin = nullptr;
  if (lf_reader_find(r, name, &ref) == LF_OK &&
      lf_reader_acquire_version(r, ref, version, &pin) == LF_OK) {
    image.resize(lf_pin_slot_bytes(pin));
    CHECK_MESSAGE(lf_pin_copy_slot(pin, image.data(), image.size()) == LF_OK,
                  lf_reader_last_error(r));
    lf_pin_release(pin);
  }
  lf_reader_close(r);
  return image;
}

std::string info_of(lf_client_t *c, const char *name) {
  char *json = nullptr;
  if (lf_client_info(c, name, &json) != LF_OK) return "";
  const std::string text(json);
  lf_free(json);
  return text;
}

}  // namespace

TEST_CASE("a pin's slot image copies out and a writer's slot takes one in, on the host and on "
          "a device; wrong sizes are refused") {
  Daemon d("slot-image", kTwoDevices);
  d.start();
  lf_client_t *c = open_client(d);
  lf_reader_t *r = nullptr;
  REQUIRE(lf_reader_open(d.dir().c_str(), &r) == LF_OK);
  CHECK(lf_writer_slot_bytes(nullptr) == 0);
  CHECK(lf_pin_slot_bytes(nullptr) == 0);
  CHECK(lf_writer_copy_in_slot(nullptr, r, 1) == LF_E_INVALID_ARGUMENT);
  CHECK(lf_pin_copy_slot(nullptr, r, 1) == LF_E_INVALID_ARGUMENT);

  // Device 1 first: written there, copied to device 0 by the daemon before the flip.
  for (const char *placement : {"host", "cuda:1,0"}) {
    CAPTURE(placement);
    const bool on_device = std::string(placement) != "host";
    const char *name = on_device ? "on-device" : "on-host";
    // 1250 x 16 f32 per tensor: 80000 bytes, so there is padding between tensors.
    create_adapter(c, name, 3, 1250, placement);
    const auto slot_bytes = static_cast<size_t>(lftest::json_number(info_of(c, name), "slot_bytes"));
    REQUIRE(slot_bytes > 3 * 80000);

    // A checksum that is not the image's: refused on the slot where it lies, nothing flips.
    lf_writer_t *w = nullptr;
    REQUIRE(lf_client_begin_write(c, name, 0, &w) == LF_OK);
    CHECK(lf_writer_slot_bytes(w) == slot_bytes);
    const std::vector<std::byte> image = pattern_image(w, 7, 0xA5);
    const uint64_t sum = loraflip::kernels::checksum(image.data(), image.size());
    REQUIRE(lf_writer_copy_in_slot(w, image.data(), image.size()) == LF_OK);
    uint64_t made = 0;
    CHECK(lf_writer_commit_as(w, 7, LF_COMMIT_CHECKSUM, sum ^ 1, &made) == LF_E_VALIDATION);
    CHECK(last_version(c, name) == 0);

    // Wrong sizes and no source: refused, and the writer goes on.
    REQUIRE(lf_client_begin_write(c, name, 0, &w) == LF_OK);
    CHECK(lf_writer_copy_in_slot(w, image.data(), slot_bytes - 1) == LF_E_INVALID_ARGUMENT);
    CHECK(std::string(lf_client_last_error(c)).find(std::to_string(slot_bytes)) !=
          std::string::npos);
    CHECK(lf_writer_copy_in_slot(w, image.data(), slot_bytes + 1) == LF_E_INVALID_ARGUMENT);
    CHECK(lf_writer_copy_in_slot(w, nullptr, slot_bytes) == LF_E_INVALID_ARGUMENT);
    // The image whole: the daemon's checksum of the slot (on its device for a device slot),
    // padding included, is the image's.
    REQUIRE(lf_writer_copy_in_slot(w, image.data(), image.size()) == LF_OK);
    REQUIRE_MESSAGE(lf_writer_commit_as(w, 7, LF_COMMIT_CHECKSUM, sum, &made) == LF_OK,
                    lf_client_last_error(c));
    CHECK(made == 7);

    lf_adapter_ref_t ref = 0;
    REQUIRE(lf_reader_find(r, name, &ref) == LF_OK);
    lf_pin_t *pin = nullptr;
    REQUIRE(lf_reader_acquire(r, ref, 7, &pin) == LF_OK);
    lf_tensor_view_t view{};
    REQUIRE(lf_pin_tensor(pin, 0, &view) == LF_OK);
    CHECK(view.device == (on_device ? 1 : -1));
    CHECK(lf_pin_slot_bytes(pin) == slot_bytes);
    std::vector<std::byte> out(slot_bytes + 1, std::byte{0});
    CHECK(lf_pin_copy_slot(pin, out.data(), slot_bytes - 1) == LF_E_INVALID_ARGUMENT);
    CHECK(std::string(lf_reader_last_error(r)).find(std::to_string(slot_bytes)) !=
          std::string::npos);
    CHECK(lf_pin_copy_slot(pin, out.data(), slot_bytes + 1) == LF_E_INVALID_ARGUMENT);
    CHECK(lf_pin_copy_slot(pin, nullptr, slot_bytes) == LF_E_INVALID_ARGUMENT);
    REQUIRE(lf_pin_copy_slot(pin, out.data(), slot_bytes) == LF_OK);
    out.pop_back();
    CHECK(out == image);
    // Every tensor holds version 7's pattern, on each device the version was copied to.
    CHECK(lftest::count_torn(pin) == 0);
    if (on_device) {
      CHECK(lftest::count_torn(pin, 0) == 0);
      CHECK(lftest::count_torn(pin, 1) == 0);
    }
    lf_pin_release(pin);

    // lf_writer_commit computes a checksum over host memory only: on a device slot it is still
    // refused (lf_writer_commit_as above took the checksum given).
    if (on_device) {
      REQUIRE(lf_client_begin_write(c, name, 0, &w) == LF_OK);
      CHECK(lf_writer_commit(w, LF_COMMIT_CHECKSUM, &made) == LF_E_UNSUPPORTED);
      // Refused before it was sent, the commit still gave its slot back: no lease is left to
      // hold it until it expires.
      char *json = nullptr;
      REQUIRE(lf_client_info(c, name, &json) == LF_OK);
      CHECK(lftest::json_number(json, "writing") == 0);
      lf_free(json);
    }
  }
  lf_reader_close(r);
  lf_client_close(c);
}

TEST_CASE("followers mirror host and device adapters into host and device placements, with the "
          "upstream's numbers and bytes") {
  // Follower 0 serves no devices and follows into host placement (the default); follower 1
  // into its devices, device 1 first; follower 2 into cuda:0, but already has "on-host" on the
  // host, which it must then leave alone.
  Mesh mesh(3, {.follow_options = {"--chunk-bytes", "65536"},
                .upstream_daemon = kTwoDevices,
                .follower_daemons = {{}, kTwoDevices, kTwoDevices},
                .placements = {"", "cuda:1,0", "cuda:0"}});
  // --placement is checked before anything runs.
  const std::string relay = env_path("LORAFLIP_RELAY");
  for (const char *bad : {"cuda:", "cuda:0,", "gpu:0", "cuda:x"})
    CHECK(run(relay + " follow --runtime-dir " + mesh.dir.path + " --upstream tcp://127.0.0.1:9 " +
              "--insecure --placement '" + bad + "' 2>/dev/null") == 2);

  // Follower 2's own "on-host", made while the upstream has nothing to offer yet.
  {
    lf_client_t *own = open_client(*mesh.daemons[2]);
    create_adapter(own, "on-host", 4, 1250, "host");
    lf_client_close(own);
  }
  // 1250 x 16 f32 per tensor (padding between tensors), 5 x 64 KiB chunks per version.
  create_adapter(mesh.up, "on-host", 4, 1250, "host");
  create_adapter(mesh.up, "on-device", 4, 1250, "cuda:0,1");

  // One Watch per follower and adapter (a Watch follows one name).
  const char *names[] = {"on-host", "on-device"};
  std::vector<std::unique_ptr<Watch>> watches;  // [follower * 2 + adapter]
  for (int i = 0; i < 3; ++i)
    for (int a = 0; a < 2; ++a) watches.push_back(std::make_unique<Watch>(*mesh.daemons[i]));
  const auto poll_all = [&] {
    for (size_t k = 0; k < watches.size(); ++k) watches[k]->poll(names[k % 2]);
  };

  constexpr uint64_t kVersions = 10;
  for (uint64_t g = 1; g <= kVersions; ++g) {
    for (const char *name : names) REQUIRE(publish_pattern(mesh.up, name, g) == g);
    poll_all();
  }
  // Everything arrives but follower 2's "on-host", which it does not follow.
  const int64_t took = lftest::wait_until(
      [&] {
        poll_all();
        for (size_t k = 0; k < watches.size(); ++k)
          if (k != 4 && watches[k]->last != kVersions) return false;
        return true;
      },
      60000);
  CHECK_MESSAGE(took >= 0, "followers did not reach version ", kVersions, "; see ",
                mesh.follow_log(0), ", ", mesh.follow_log(1), ", ", mesh.follow_log(2), " and ",
                mesh.serve_log());
  CHECK_FALSE(log_has(mesh.serve_log(), "not serving"));

  const char *placed[] = {"host", "cuda:1,0", "cuda:0"};
  for (int i = 0; i < 3; ++i) {
    lf_client_t *fc = open_client(*mesh.daemons[i]);
    for (int a = 0; a < 2; ++a) {
      if (i == 2 && a == 0) continue;
      const char *name = names[a];
      CAPTURE(i);
      CAPTURE(name);
      const Watch &w = *watches[i * 2 + a];
      CHECK(w.last == kVersions);
      CHECK(w.torn == 0);      // every version seen held the upstream's pattern, whole
      CHECK(w.backward == 0);  // and versions only went forward
      CHECK(last_version(fc, name) == kVersions);
      CHECK(tensors_of(fc, name) == tensors_of(mesh.up, name));
      CHECK(info_of(fc, name).find(std::string("\"placement\":\"") + placed[i] + "\"") !=
            std::string::npos);
      // Byte for byte, padding included: the follower's slot is the upstream's.
      const std::vector<std::byte> theirs = slot_image(mesh.upstream, name, kVersions);
      REQUIRE(!theirs.empty());
      CHECK(slot_image(*mesh.daemons[i], name, kVersions) == theirs);
    }
    lf_client_close(fc);
  }
  // Follower 1's daemon copied each version to its other device before the flip.
  {
    lf_reader_t *r = nullptr;
    REQUIRE(lf_reader_open(mesh.daemons[1]->dir().c_str(), &r) == LF_OK);
    for (const char *name : names) {
      CAPTURE(name);
      lf_adapter_ref_t ref = 0;
      REQUIRE(lf_reader_find(r, name, &ref) == LF_OK);
      lf_pin_t *pin = nullptr;
      REQUIRE(lf_reader_acquire(r, ref, kVersions, &pin) == LF_OK);
      CHECK(lftest::count_torn(pin, 1) == 0);
      CHECK(lftest::count_torn(pin, 0) == 0);
      lf_pin_release(pin);
    }
    lf_reader_close(r);
  }
  // Follower 2 left its own host-placed "on-host" as it was, and said why.
  CHECK(log_has(mesh.follow_log(2),
                "not following 'on-host': the local adapter is placed on host, not on cuda:0"));
  lf_client_t *f2 = open_client(*mesh.daemons[2]);
  CHECK(last_version(f2, "on-host") == 0);
  lf_client_close(f2);
  // Not offered "on-host" again at every long poll: it tells the upstream it cannot take that
  // version (Have::stuck), so its wants stay a few long polls' worth.
  const std::string status2 = mesh.daemons[2]->dir() + "/relay-follow.json";
  const int64_t wants = wants_during(status2, 3000);
  CAPTURE(read_file(status2));
  CHECK(wants >= 0);
  CHECK(wants <= 5);

  for (auto &r : mesh.relays) CHECK(r->stop() == 0);
  CHECK(mesh.serve->stop() == 0);
}
