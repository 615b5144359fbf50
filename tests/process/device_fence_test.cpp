// What a commit's event covers, through the host stand-in, whose streams (each device's default
// stream included) run asynchronously, as CUDA's do: a copy has not landed when its call
// returns, so a commit whose event misses a stream lets the daemon check and flip stale bytes,
// and these tests see it. Each test holds a stream back (paused, as a GPU stream stuck behind
// long kernels), commits from another thread, and checks that the daemon does not flip until
// the stream is let go, and that the version then holds the new bytes. Also: pins released
// after a stream's work refuse a stream that is being captured into a graph.
#include <doctest/doctest.h>

#include <atomic>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "device/device.hpp"
#include "support.hpp"
#include "two_devices.hpp"

using namespace lftest;
namespace dev = loraflip::device;

namespace {

constexpr int64_t kElements = kTwoDeviceElements;
constexpr size_t kBytes = kElements * 4;
// How long a stream is held back: a commit that returns within it did not wait.
constexpr int kHoldMs = 300;

std::vector<float> values_of(float x) { return std::vector<float>(kElements, x); }

// Commits `w` on another thread while `hold` keeps some of its work queued, checks that the
// commit neither returns nor flips `name` meanwhile, then lets the work go (`release`) and
// returns the commit's status.
int commit_held(TwoDevices &t, lf_writer_t *w, const char *name, const std::function<void()> &release) {
  const uint64_t before = t.active(name);
  std::atomic<bool> returned{false};
  int status = LF_E_INTERNAL;
  std::thread committer([&] {
    status = lf_writer_commit(w, LF_COMMIT_CHECK_FINITE, nullptr);
    returned = true;
  });
  sleep_ms(kHoldMs);
  CHECK_MESSAGE(!returned.load(), "the commit returned before its copies could have landed");
  CHECK(t.active(name) == before);
  release();
  committer.join();
  const std::string why = status == LF_OK ? "" : lf_client_last_error(t.client);
  if (status != LF_OK) MESSAGE(why);
  return status;
}

// The bytes of tensor `index` of `name`'s active version.
std::vector<float> active_tensor(TwoDevices &t, const char *name, size_t index) {
  lf_reader_t *reader = nullptr;
  REQUIRE(lf_reader_open(t.daemon.dir().c_str(), &reader) == LF_OK);
  lf_adapter_ref_t ref = 0;
  REQUIRE(lf_reader_find(reader, name, &ref) == LF_OK);
  lf_pin_t *pin = nullptr;
  REQUIRE(lf_reader_acquire(reader, ref, 0, &pin) == LF_OK);
  lf_tensor_view_t v;
  REQUIRE(lf_pin_tensor(pin, index, &v) == LF_OK);
  std::vector<float> out(kElements);
  std::memcpy(out.data(), v.data, kBytes);
  lf_pin_release(pin);
  lf_reader_close(reader);
  return out;
}

// Tensor 0 of `name`'s active version on `device`, pinned for as long as this lives: device
// memory a test can copy from.
struct PinnedTensor {
  lf_reader_t *reader = nullptr;
  lf_pin_t *pin = nullptr;
  lf_tensor_view_t view{};
  PinnedTensor(TwoDevices &t, const char *name, int device) {
    REQUIRE(lf_reader_open(t.daemon.dir().c_str(), &reader) == LF_OK);
    lf_adapter_ref_t ref = 0;
    REQUIRE(lf_reader_find(reader, name, &ref) == LF_OK);
    REQUIRE(lf_reader_acquire(reader, ref, 0, &pin) == LF_OK);
    REQUIRE(lf_pin_tensor_on_device(pin, 0, device, &view) == LF_OK);
  }
  ~PinnedTensor() {
    lf_pin_release(pin);
    lf_reader_close(reader);
  }
  PinnedTensor(const PinnedTensor &) = delete;
  PinnedTensor &operator=(const PinnedTensor &) = delete;
};

// Publishes x into both tensors of `name` (synchronous copies).
void publish(TwoDevices &t, const char *name, float x) {
  const std::vector<float> data = values_of(x);
  lf_writer_t *w = nullptr;
  REQUIRE(lf_client_begin_write(t.client, name, 0, &w) == LF_OK);
  REQUIRE(lf_writer_copy_in(w, 0, data.data(), kBytes) == LF_OK);
  REQUIRE(lf_writer_copy_in(w, 1, data.data(), kBytes) == LF_OK);
  REQUIRE(lf_writer_commit(w, LF_COMMIT_CHECK_FINITE, nullptr) == LF_OK);
}

}  // namespace

TEST_CASE("a peer copy on the null stream runs on the source device, and the commit waits for it") {
  TwoDevices t("fence-peer-null");
  publish(t, "on0", 7.0f);
  // The source: the pinned version of "on0", device memory of device 0.
  const PinnedTensor source(t, "on0", 0);
  const lf_tensor_view_t &v0 = source.view;

  // Device 0's default stream is held back: the peer copy waits there, while the host copy
  // into tensor 1 runs on device 1's default stream at once. An event recorded on device 1's
  // stream alone would complete before the peer copy lands.
  const std::vector<float> twos = values_of(2.0f);
  lf_writer_t *w = nullptr;
  REQUIRE(lf_client_begin_write(t.client, "on1", 0, &w) == LF_OK);
  dev::host_pause_default_stream(0, true);
  REQUIRE(lf_writer_copy_in_async(w, 0, v0.data, kBytes, 0, nullptr) == LF_OK);
  REQUIRE(lf_writer_copy_in_async(w, 1, twos.data(), kBytes, -1, nullptr) == LF_OK);
  CHECK(commit_held(t, w, "on1", [] { dev::host_pause_default_stream(0, false); }) == LF_OK);
  CHECK(active_tensor(t, "on1", 0) == values_of(7.0f));
  CHECK(active_tensor(t, "on1", 1) == twos);
}

TEST_CASE("a peer copy on a stream of the source device is fenced onto the slot's device") {
  TwoDevices t("fence-peer-stream");
  publish(t, "on0", 3.0f);
  const PinnedTensor source(t, "on0", 0);
  const lf_tensor_view_t &v0 = source.view;

  // The trainer's stream on device 0 (its own backend, as torch's would be). An interprocess
  // event of device 1 cannot be recorded on it (cudaEventRecord refuses): the commit goes
  // through a fence on device 1.
  auto mine = dev::make_host_backend("fence-user", 2);
  auto s0 = mine->create_stream(0);
  REQUIRE(s0.ok());
  dev::host_pause_stream(s0.value(), true);
  lf_writer_t *w = nullptr;
  REQUIRE(lf_client_begin_write(t.client, "on1", 0, &w) == LF_OK);
  REQUIRE(lf_writer_copy_in_async(w, 0, v0.data, kBytes, 0, s0.value()) == LF_OK);
  REQUIRE(lf_writer_copy_in_async(w, 1, v0.data, kBytes, 0, s0.value()) == LF_OK);
  CHECK(commit_held(t, w, "on1", [&] { dev::host_pause_stream(s0.value(), false); }) == LF_OK);
  CHECK(active_tensor(t, "on1", 0) == values_of(3.0f));
  CHECK(active_tensor(t, "on1", 1) == values_of(3.0f));
  mine->destroy_stream(0, s0.value());
}

TEST_CASE("copies of one write on two streams of the slot's device are all covered") {
  TwoDevices t("fence-two-streams");
  auto mine = dev::make_host_backend("fence-user2", 2);
  auto a = mine->create_stream(1);
  auto b = mine->create_stream(1);
  REQUIRE(a.ok());
  REQUIRE(b.ok());
  const std::vector<float> fives = values_of(5.0f), sixes = values_of(6.0f);
  lf_writer_t *w = nullptr;
  REQUIRE(lf_client_begin_write(t.client, "on1", 0, &w) == LF_OK);
  REQUIRE(lf_writer_copy_in_async(w, 0, fives.data(), kBytes, -1, a.value()) == LF_OK);
  dev::host_pause_stream(b.value(), true);  // the second stream is the slow one
  REQUIRE(lf_writer_copy_in_async(w, 1, sixes.data(), kBytes, -1, b.value()) == LF_OK);
  CHECK(commit_held(t, w, "on1", [&] { dev::host_pause_stream(b.value(), false); }) == LF_OK);
  CHECK(active_tensor(t, "on1", 0) == fives);
  CHECK(active_tensor(t, "on1", 1) == sixes);
  // A stream of another device for a copy from host memory is refused, naming both devices.
  REQUIRE(lf_client_begin_write(t.client, "on0", 0, &w) == LF_OK);
  CHECK(lf_writer_copy_in_async(w, 0, fives.data(), kBytes, -1, a.value()) == LF_E_INVALID_ARGUMENT);
  CHECK(std::string(lf_client_last_error(t.client)).find("device 1") != std::string::npos);
  REQUIRE(lf_writer_abort(w) == LF_OK);
  mine->destroy_stream(1, a.value());
  mine->destroy_stream(1, b.value());
}

TEST_CASE("writes through device views are covered once their stream is named to the commit") {
  TwoDevices t("fence-views");
  auto mine = dev::make_host_backend("fence-user3", 2);
  auto s = mine->create_stream(0);
  REQUIRE(s.ok());
  const std::vector<float> nines = values_of(9.0f);
  lf_writer_t *w = nullptr;
  REQUIRE(lf_client_begin_write(t.client, "on0", 0, &w) == LF_OK);
  // The user's "kernels": stores through the views, queued on the user's stream (stuck).
  dev::host_pause_stream(s.value(), true);
  for (size_t i = 0; i < 2; ++i) {
    lf_tensor_view_t view;
    REQUIRE(lf_writer_tensor(w, i, &view) == LF_OK);
    CHECK(view.device == 0);
    dev::host_enqueue(s.value(), 0, [dst = view.data, &nines] { std::memcpy(dst, nines.data(), kBytes); });
  }
  REQUIRE(lf_writer_commit_after(w, 0, s.value()) == LF_OK);
  CHECK(commit_held(t, w, "on0", [&] { dev::host_pause_stream(s.value(), false); }) == LF_OK);
  CHECK(active_tensor(t, "on0", 0) == nines);
  CHECK(active_tensor(t, "on0", 1) == nines);

  // Device -1 means the stream's own device; a device that disagrees with the stream's is
  // refused; so is one this process does not have.
  REQUIRE(lf_client_begin_write(t.client, "on0", 0, &w) == LF_OK);
  CHECK(lf_writer_commit_after(w, -1, s.value()) == LF_OK);
  CHECK(lf_writer_commit_after(w, 1, s.value()) == LF_E_INVALID_ARGUMENT);
  CHECK(lf_writer_commit_after(w, 9, nullptr) == LF_E_INVALID_ARGUMENT);
  CHECK(lf_writer_commit_after(w, 1, nullptr) == LF_OK);  // device 1's default stream
  CHECK(lf_writer_commit(w, 0, nullptr) == LF_OK);
  mine->destroy_stream(0, s.value());
}

TEST_CASE("lf_pin_release_after refuses a stream that is being captured into a graph") {
  TwoDevices t("fence-capture");
  publish(t, "on0", 1.0f);
  lf_reader_t *reader = nullptr;
  REQUIRE(lf_reader_open(t.daemon.dir().c_str(), &reader) == LF_OK);
  lf_adapter_ref_t ref = 0;
  REQUIRE(lf_reader_find(reader, "on0", &ref) == LF_OK);
  lf_pin_t *pin = nullptr;
  REQUIRE(lf_reader_acquire(reader, ref, 0, &pin) == LF_OK);
  auto mine = dev::make_host_backend("fence-user4", 2);
  auto s = mine->create_stream(0);
  REQUIRE(s.ok());

  // A record inside the capture would run at each replay, and its query fails until then: a
  // pin that ended on that failure would free the slot under the graph.
  dev::host_capture_stream(s.value(), true);
  CHECK(lf_pin_release_after(pin, 0, s.value()) == LF_E_INVALID_ARGUMENT);
  CHECK(std::string(lf_reader_last_error(reader)).find("captured") != std::string::npos);
  CHECK(lf_pin_version(pin) == 1);  // still held
  // Another writer cannot take the pinned slot's place: the version stays readable.
  publish(t, "on0", 2.0f);
  lf_tensor_view_t v;
  REQUIRE(lf_pin_tensor(pin, 0, &v) == LF_OK);
  CHECK(static_cast<const float *>(v.data)[0] == 1.0f);
  dev::host_capture_stream(s.value(), false);

  // Outside the capture it works, and the pin ends once the stream's work is done.
  dev::host_pause_stream(s.value(), true);
  REQUIRE(lf_pin_release_after(pin, 0, s.value()) == LF_OK);
  size_t pending = 0;
  REQUIRE(lf_reader_release_completed(reader, &pending) == LF_OK);
  CHECK(pending == 1);
  dev::host_pause_stream(s.value(), false);
  REQUIRE(mine->synchronize(0, s.value()).ok());
  REQUIRE(lf_reader_release_completed(reader, &pending) == LF_OK);
  CHECK(pending == 0);
  lf_reader_close(reader);
  mine->destroy_stream(0, s.value());
}
