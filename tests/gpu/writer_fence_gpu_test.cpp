// What a commit's event covers, on real GPUs: a real loraflipd with the CUDA backend, this
// process as writer and reader through the public C API. The host stand-in's version of these
// tests is tests/process/device_fence_test.cpp; here the streams are CUDA's own, with their
// quirks (each device's legacy default stream, a peer copy with a NULL stream running on the
// source device's). Each write is held back behind a host function that sleeps kSleepMs on the
// stream it will run on, so a commit whose event misses that stream returns before the sleep
// ends and lets the daemon flip bytes that have not landed; the test sees both (the sleep not
// over when commit returned, and the bytes, read back on a stream that does not wait for it).
//
// The two-GPU cases skip with "needs two GPUs" (scripts/gpu-check tolerates that reason alone,
// and only on a machine with fewer than two GPUs); they run as meson tests of their own
// (tests/gpu/meson.build) so that the skip shows. Every case skips, and the executable exits
// 77, where no GPU is usable, with CUDA's reason (a driver too old for this runtime says so).
#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include <cuda_runtime.h>

#include "loraflip.h"
#include "tests/process/support.hpp"
#include "tests/skip.hpp"

using namespace lftest;

namespace {

constexpr int64_t kRows = 256, kCols = 256;  // per tensor: f32, 256 KiB
constexpr size_t kBytes = kRows * kCols * 4;
constexpr int kTensors = 2;
// How long the write's stream is held back: far longer than copying 512 KiB takes, or than
// the daemon takes to check and flip, so a commit that did not wait returns well inside it.
constexpr int kSleepMs = 200;

// The usable GPUs, or -1 with *why set (no driver, a driver older than this runtime, none).
int gpu_count(std::string *why) {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    *why = std::string("no usable GPU: ") + cudaGetErrorString(e);
    return -1;
  }
  if (n == 0) *why = "no usable GPU: CUDA sees none";
  return n;
}

// Tensor t's values for generation g: finite (the commit's check), never 0 (a fresh slot's
// bytes), distinct per tensor, element and generation.
std::vector<float> values(int t, int g) {
  std::vector<float> v(kRows * kCols);
  for (size_t i = 0; i < v.size(); ++i)
    v[i] = static_cast<float>(g * 1000 + t * 100 + 1) + static_cast<float>(i % 4093) / 4096.0f;
  return v;
}

// Pinned host memory: an asynchronous copy from pageable memory may wait for the stream, which
// would turn a held-back stream into a blocked test.
struct Pinned {
  void *ptr = nullptr;
  explicit Pinned(size_t n) { REQUIRE(cudaMallocHost(&ptr, n) == cudaSuccess); }
  ~Pinned() { (void)cudaFreeHost(ptr); }
  Pinned(const Pinned &) = delete;
  Pinned &operator=(const Pinned &) = delete;
};

// A stream of `device` that does not wait for the legacy default stream.
struct Stream {
  int device;
  cudaStream_t s = nullptr;
  explicit Stream(int d) : device(d) {
    REQUIRE(cudaSetDevice(d) == cudaSuccess);
    REQUIRE(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) == cudaSuccess);
  }
  ~Stream() {
    (void)cudaSetDevice(device);
    (void)cudaStreamSynchronize(s);
    (void)cudaStreamDestroy(s);
  }
  Stream(const Stream &) = delete;
  Stream &operator=(const Stream &) = delete;
};

// A host function that sleeps kSleepMs on a stream: the work queued after it waits that long.
// `over` tells whether it has finished. Must outlive the stream's run (wait_over()).
struct Sleeper {
  std::atomic<bool> over{false};
  int device = 0;
  cudaStream_t stream = nullptr;
  static void CUDART_CB run(void *self) {
    std::this_thread::sleep_for(std::chrono::milliseconds(kSleepMs));
    static_cast<Sleeper *>(self)->over.store(true);
  }
  // On `stream` of `device` (nullptr: its legacy default stream).
  void queue(int d, cudaStream_t s) {
    device = d;
    stream = s;
    REQUIRE(cudaSetDevice(d) == cudaSuccess);
    REQUIRE(cudaLaunchHostFunc(s, &Sleeper::run, this) == cudaSuccess);
  }
  ~Sleeper() {
    (void)cudaSetDevice(device);
    (void)cudaStreamSynchronize(stream);
  }
};

// Reads device memory back into host memory on a stream of its own that waits for nothing
// else, so that a fence that was missed stays visible. Made before a write is held back: a
// page-locked allocation may wait for the device's work, which would hide what it should show.
struct ReadBack {
  Stream stream;
  Pinned host;
  explicit ReadBack(int device) : stream(device), host(kBytes) {}

  // Tensor t of `pin`, on the ReadBack's device, equals values(t, g) byte for byte.
  void check(const lf_pin_t *pin, int g) {
    for (int t = 0; t < kTensors; ++t) {
      lf_tensor_view_t v;
      REQUIRE(lf_pin_tensor_on_device(pin, static_cast<size_t>(t), stream.device, &v) == LF_OK);
      REQUIRE(v.device == stream.device);
      REQUIRE(v.nbytes == kBytes);
      REQUIRE(cudaMemcpyAsync(host.ptr, v.data, kBytes, cudaMemcpyDeviceToHost, stream.s) ==
              cudaSuccess);
      REQUIRE(cudaStreamSynchronize(stream.s) == cudaSuccess);
      const std::vector<float> want = values(t, g);
      const auto *got = static_cast<const unsigned char *>(host.ptr);
      const auto *expected = reinterpret_cast<const unsigned char *>(want.data());
      size_t differ = 0, first = kBytes;
      for (size_t i = 0; i < kBytes; ++i)
        if (got[i] != expected[i] && differ++ == 0) first = i;
      CHECK_MESSAGE(differ == 0, "version ", lf_pin_version(pin), ", tensor ", t, " on device ",
                    stream.device, ": ", differ, " bytes differ from generation ", g,
                    ", the first at byte ", first);
    }
  }
};

// A daemon of the CUDA backend serving GPUs 0 and 1 (0 alone on a one-GPU machine), a client,
// a reader.
struct Gpus {
  Daemon daemon;
  lf_client_t *client = nullptr;
  lf_reader_t *reader = nullptr;
  explicit Gpus(int gpus)
      : daemon("gpu-fence", {"--devices", gpus >= 2 ? "0,1" : "0", "--device-backend", "cuda",
                             "--device-arena-size", "64M"}) {
    daemon.start();
    REQUIRE(lf_client_open(daemon.dir().c_str(), 10000, &client) == LF_OK);
    REQUIRE(lf_reader_open(daemon.dir().c_str(), &reader) == LF_OK);
  }
  ~Gpus() {
    lf_reader_close(reader);
    lf_client_close(client);
  }
  std::string why() const {
    return std::string(lf_client_last_error(client)) + "\ndaemon log:\n" + daemon.log();
  }

  // Two f32 tensors of kRows x kCols placed on `placement` ("cuda:N").
  void create(const char *name, const char *placement) {
    lf_spec_t *spec = nullptr;
    REQUIRE(lf_spec_new(&spec) == LF_OK);
    const int64_t shape[2] = {kRows, kCols};
    for (const char *t : {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
                          "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"})
      REQUIRE(lf_spec_add_tensor(spec, t, LF_DTYPE_F32, 2, shape) == LF_OK);
    REQUIRE(lf_spec_set_placement(spec, placement) == LF_OK);
    const int rc = lf_client_create_adapter(client, name, spec);
    lf_spec_free(spec);
    REQUIRE_MESSAGE(rc == LF_OK, why());
  }

  // Writes generation g from host memory (lf_writer_copy_in waits for its copies) and commits.
  uint64_t publish(const char *name, int g) {
    lf_writer_t *w = nullptr;
    REQUIRE_MESSAGE(lf_client_begin_write(client, name, 0, &w) == LF_OK, why());
    for (int t = 0; t < kTensors; ++t)
      REQUIRE(lf_writer_copy_in(w, static_cast<size_t>(t), values(t, g).data(), kBytes) == LF_OK);
    uint64_t version = 0;
    REQUIRE_MESSAGE(lf_writer_commit(w, LF_COMMIT_CHECK_FINITE, &version) == LF_OK, why());
    return version;
  }

  lf_pin_t *pin(const char *name, uint64_t version) {
    lf_adapter_ref_t ref = 0;
    REQUIRE(lf_reader_find(reader, name, &ref) == LF_OK);
    lf_pin_t *p = nullptr;
    REQUIRE_MESSAGE(lf_reader_acquire(reader, ref, version, &p) == LF_OK,
                    lf_reader_last_error(reader));
    REQUIRE(lf_pin_version(p) == version);
    return p;
  }
};

// Commits `w` (whose copies wait behind `sleeper`): the commit must not return before the
// sleep is over, since the daemon flips only once the commit's event has completed.
uint64_t commit_behind(Gpus &g, lf_writer_t *w, const Sleeper &sleeper) {
  WARN_MESSAGE(!sleeper.over.load(), "the copies waited for their stream inside the calls: this "
                                     "run did not exercise the commit's fence");
  uint64_t version = 0;
  REQUIRE_MESSAGE(lf_writer_commit(w, LF_COMMIT_CHECK_FINITE, &version) == LF_OK, g.why());
  CHECK_MESSAGE(sleeper.over.load(), "the commit returned while its copies still waited behind "
                                     "the sleeping host function: its event missed their stream "
                                     "(or the copies ran on another stream than the API says)");
  return version;
}

// Publishes generation 0 of `name` and reads it through a pin: from then on this process
// has the adapter's device block mapped, so that mapping it (which may wait for the device)
// does not happen after the commit under test, where it could hide a missed fence.
void publish_and_map(Gpus &g, const char *name, ReadBack &rb) {
  const uint64_t version = g.publish(name, 0);
  lf_pin_t *pin = g.pin(name, version);
  rb.check(pin, 0);
  lf_pin_release(pin);
}

// Cases (a) and (b): a device-0 adapter's pinned tensors copied into a device-1 adapter by
// lf_writer_copy_in_async (peer copies) on `stream` of device 0 (nullptr: the legacy default
// stream, where a peer copy with a NULL stream runs), held back by a sleeping host function.
void peer_copy_case(Gpus &g, cudaStream_t stream) {
  g.create("src", "cuda:0");
  g.create("dst", "cuda:1");
  ReadBack on0(0), on1(1);
  const uint64_t src_version = g.publish("src", 1);
  lf_pin_t *src = g.pin("src", src_version);
  on0.check(src, 1);
  publish_and_map(g, "dst", on1);

  lf_writer_t *w = nullptr;
  REQUIRE_MESSAGE(lf_client_begin_write(g.client, "dst", 0, &w) == LF_OK, g.why());
  Sleeper sleeper;
  sleeper.queue(0, stream);
  for (int t = 0; t < kTensors; ++t) {
    lf_tensor_view_t v;
    REQUIRE(lf_pin_tensor(src, static_cast<size_t>(t), &v) == LF_OK);
    REQUIRE(v.device == 0);
    REQUIRE_MESSAGE(lf_writer_copy_in_async(w, static_cast<size_t>(t), v.data, kBytes, 0,
                                            stream) == LF_OK,
                    g.why());
  }
  const uint64_t version = commit_behind(g, w, sleeper);
  lf_pin_t *dst = g.pin("dst", version);
  on1.check(dst, 1);
  lf_pin_release(dst);
  lf_pin_release(src);
}

}  // namespace

TEST_CASE("a commit covers peer copies queued behind other work on the source GPU's default "
          "stream") {
  std::string why;
  const int gpus = gpu_count(&why);
  if (gpus < 1) LF_SKIP(why);
  if (gpus < 2) LF_SKIP("needs two GPUs");
  Gpus g(gpus);
  peer_copy_case(g, nullptr);
}

TEST_CASE("a commit covers peer copies queued on a non-default stream of the source GPU") {
  std::string why;
  const int gpus = gpu_count(&why);
  if (gpus < 1) LF_SKIP(why);
  if (gpus < 2) LF_SKIP("needs two GPUs");
  Gpus g(gpus);
  Stream s(0);
  peer_copy_case(g, s.s);
}

TEST_CASE("a commit covers writes through device views on a stream named by "
          "lf_writer_commit_after") {
  std::string why;
  const int gpus = gpu_count(&why);
  if (gpus < 1) LF_SKIP(why);
  Gpus g(gpus);
  g.create("views", "cuda:0");
  ReadBack on0(0);
  publish_and_map(g, "views", on0);
  lf_writer_t *w = nullptr;
  REQUIRE_MESSAGE(lf_client_begin_write(g.client, "views", 0, &w) == LF_OK, g.why());
  Stream s(0);
  Pinned host(kBytes * kTensors);
  Sleeper sleeper;
  sleeper.queue(0, s.s);
  for (int t = 0; t < kTensors; ++t) {
    lf_tensor_view_t v;
    REQUIRE(lf_writer_tensor(w, static_cast<size_t>(t), &v) == LF_OK);
    REQUIRE(v.device == 0);
    auto *from = static_cast<unsigned char *>(host.ptr) + static_cast<size_t>(t) * kBytes;
    std::memcpy(from, values(t, 2).data(), kBytes);
    REQUIRE(cudaMemcpyAsync(v.data, from, kBytes, cudaMemcpyHostToDevice, s.s) == cudaSuccess);
  }
  REQUIRE_MESSAGE(lf_writer_commit_after(w, 0, s.s) == LF_OK, g.why());
  const uint64_t version = commit_behind(g, w, sleeper);
  lf_pin_t *pin = g.pin("views", version);
  on0.check(pin, 2);
  lf_pin_release(pin);
}

TEST_CASE("lf_pin_release_after refuses a stream being captured into a graph and the pin stays "
          "valid") {
  std::string why;
  const int gpus = gpu_count(&why);
  if (gpus < 1) LF_SKIP(why);
  Gpus g(gpus);
  g.create("graph", "cuda:0");
  const uint64_t version = g.publish("graph", 3);
  lf_pin_t *pin = g.pin("graph", version);
  ReadBack on0(0);

  Stream s(0);
  void *scratch = nullptr;
  REQUIRE(cudaMalloc(&scratch, 4096) == cudaSuccess);
  REQUIRE(cudaStreamBeginCapture(s.s, cudaStreamCaptureModeRelaxed) == cudaSuccess);
  CHECK(cudaMemsetAsync(scratch, 0, 4096, s.s) == cudaSuccess);  // a node: the graph is used
  const int refused = lf_pin_release_after(pin, 0, s.s);
  cudaGraph_t graph = nullptr;
  const cudaError_t ended = cudaStreamEndCapture(s.s, &graph);
  CHECK_MESSAGE(refused == LF_E_INVALID_ARGUMENT, "lf_pin_release_after answered ",
                lf_strerror(refused), " on a capturing stream");
  CHECK_MESSAGE(ended == cudaSuccess, "the capture was broken: ", cudaGetErrorString(ended));
  if (graph != nullptr) CHECK(cudaGraphDestroy(graph) == cudaSuccess);
  CHECK(cudaFree(scratch) == cudaSuccess);
  if (refused == LF_OK) return;  // the pin is dead: nothing below may touch it

  // Still held: nothing pending, the same version, the same bytes.
  size_t pending = 1;
  REQUIRE(lf_reader_release_completed(g.reader, &pending) == LF_OK);
  CHECK(pending == 0);
  CHECK(lf_pin_version(pin) == version);
  on0.check(pin, 3);
  // Outside the capture the same call is taken, and ends once the stream's work is done.
  REQUIRE_MESSAGE(lf_pin_release_after(pin, 0, s.s) == LF_OK, lf_reader_last_error(g.reader));
  REQUIRE(cudaStreamSynchronize(s.s) == cudaSuccess);
  REQUIRE(lf_reader_release_completed(g.reader, &pending) == LF_OK);
  CHECK(pending == 0);
}
