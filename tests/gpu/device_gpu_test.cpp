// The CUDA implementation of the device interface, with the scenarios of
// tests/device/test_device_host*.cpp: blocks and events shared between processes, copies of
// every kind, peer copies, a writer killed while its stream is stuck, and the slot checks
// (tests/device/slot_check_cases.hpp, the same cases as the host implementation's).
//
// CUDA does not survive fork once initialized, so the other processes are this executable run
// again (fork + exec of /proc/self/exe with "--child <role> ..."); handles travel as hex on the
// command line or on the child's stdout. A stream is held back by a host function
// (cudaLaunchHostFunc) that waits on a flag: the CUDA counterpart of host_pause_stream.
//
// Exits 77 (meson: skipped) with the reason when no usable GPU is present.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <signal.h>
#include <string>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>
#include <vector>

#include <cuda_runtime.h>

#include "device/device.hpp"
#include "tests/device/slot_check_cases.hpp"

namespace dev = loraflip::device;

namespace {

constexpr uint64_t kBytes = uint64_t{1} << 20;
constexpr int kPending = 10, kComplete = 11;  // a query-event child's answer

std::string self_path() {
  char buf[4096];
  const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string();
}

std::string to_hex(const dev::IpcHandle &h) {
  static const char digits[] = "0123456789abcdef";
  std::string s;
  for (unsigned char b : h.bytes) {
    s += digits[b >> 4];
    s += digits[b & 15];
  }
  return s;
}

bool from_hex(const std::string &s, dev::IpcHandle *h) {
  if (s.size() != 2 * sizeof h->bytes) return false;
  auto nibble = [](char c) {
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
  };
  for (size_t i = 0; i < sizeof h->bytes; ++i) {
    const int hi = nibble(s[2 * i]), lo = nibble(s[2 * i + 1]);
    if (hi < 0 || lo < 0) return false;
    h->bytes[i] = static_cast<unsigned char>(hi << 4 | lo);
  }
  return true;
}

std::vector<unsigned char> pattern(size_t n, unsigned seed) {
  std::vector<unsigned char> v(n);
  for (size_t i = 0; i < n; ++i)
    v[i] = static_cast<unsigned char>((i * 131 + seed * 7 + i / 251) & 0xff);
  return v;
}

template <typename R>
std::string why(const R &r) {
  return r.ok() ? std::string() : r.error().message;
}

// Pinned host memory: an asynchronous copy from pageable memory may block the caller until the
// stream gets there, which would deadlock a test that holds the stream back.
struct Pinned {
  explicit Pinned(size_t n) : bytes(n) {
    if (cudaMallocHost(&ptr, n) != cudaSuccess) ptr = nullptr;
  }
  ~Pinned() {
    if (ptr != nullptr) (void)cudaFreeHost(ptr);
  }
  Pinned(const Pinned &) = delete;
  Pinned &operator=(const Pinned &) = delete;
  unsigned char *data() const { return static_cast<unsigned char *>(ptr); }
  void *ptr = nullptr;
  size_t bytes;
};

// Holds a stream back until open() (or forever): a host function that waits on a flag.
struct Gate {
  std::atomic<bool> open_flag{false};
  static void CUDART_CB wait(void *self) {
    auto *gate = static_cast<Gate *>(self);
    while (!gate->open_flag.load()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  bool block(dev::Stream stream) {
    return cudaLaunchHostFunc(static_cast<cudaStream_t>(stream), &Gate::wait, this) == cudaSuccess;
  }
  void open() { open_flag.store(true); }
};

// Runs this executable as "--child <args...>"; *out_fd (if given) reads the child's stdout.
pid_t spawn(const std::vector<std::string> &args, int *out_fd = nullptr) {
  static const std::string exe = self_path();
  int fds[2] = {-1, -1};
  if (out_fd != nullptr && ::pipe(fds) != 0) return -1;
  std::vector<std::string> full = {exe, "--child"};
  full.insert(full.end(), args.begin(), args.end());
  std::vector<char *> argv;
  for (auto &a : full) argv.push_back(a.data());
  argv.push_back(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) {  // nothing but exec: CUDA state must not be touched in a forked child
    if (out_fd != nullptr) {
      ::dup2(fds[1], STDOUT_FILENO);
      ::close(fds[0]);
      ::close(fds[1]);
    }
    ::execv(exe.c_str(), argv.data());
    ::_exit(127);
  }
  if (out_fd != nullptr) {
    ::close(fds[1]);
    *out_fd = fds[0];
  }
  return pid;
}

int wait_exit(pid_t pid) {
  int status = 0;
  if (pid < 0 || ::waitpid(pid, &status, 0) != pid) return -1;
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  return WIFSIGNALED(status) ? 128 + WTERMSIG(status) : -1;
}

int run_child(const std::vector<std::string> &args) {
  auto made = dev::make_cuda_backend();
  if (!made.ok()) return 90;
  auto &backend = *made.value();
  if (!backend.device_count().ok()) return 91;
  const std::string &role = args.at(0);

  if (role == "open-write") {  // <block handle> <bytes> <seed to expect> <seed to write>
    dev::IpcHandle h;
    if (!from_hex(args.at(1), &h)) return 92;
    const uint64_t bytes = std::stoull(args.at(2));
    auto first = backend.open_block(0, h, bytes);
    auto second = backend.open_block(0, h, bytes);
    if (!first.ok() || !second.ok()) return 1;
    if (first.value() != second.value() || backend.blocks_opened() != 1) return 5;
    auto stream = backend.create_stream(0);
    if (!stream.ok()) return 6;
    Pinned host(bytes);
    if (host.data() == nullptr) return 7;
    if (!backend.copy(host.data(), first.value(), bytes, dev::CopyKind::kDeviceToHost, 0,
                      stream.value()) ||
        !backend.synchronize(0, stream.value()))
      return 2;
    if (std::memcmp(host.data(), pattern(bytes, std::stoul(args.at(3))).data(), bytes) != 0)
      return 3;
    const auto next = pattern(bytes, std::stoul(args.at(4)));
    std::memcpy(host.data(), next.data(), bytes);
    if (!backend.copy(first.value(), host.data(), bytes, dev::CopyKind::kHostToDevice, 0,
                      stream.value()) ||
        !backend.synchronize(0, stream.value()))
      return 4;
    backend.destroy_stream(0, stream.value());
    return 0;
  }

  if (role == "query-event") {  // <event handle> [<block handle> <bytes> <seed>]
    dev::IpcHandle h;
    if (!from_hex(args.at(1), &h)) return 92;
    auto event = backend.open_event(0, h);
    if (!event.ok()) return 1;
    auto state = backend.query(event.value());
    if (!state.ok()) return 2;
    if (!state.value()) return kPending;
    if (args.size() >= 5) {
      dev::IpcHandle bh;
      if (!from_hex(args.at(2), &bh)) return 92;
      const uint64_t bytes = std::stoull(args.at(3));
      auto ptr = backend.open_block(0, bh, bytes);
      if (!ptr.ok()) return 4;
      std::vector<unsigned char> seen(bytes);
      if (!backend.copy(seen.data(), ptr.value(), bytes, dev::CopyKind::kDeviceToHost, 0,
                        nullptr) ||
          !backend.synchronize(0, nullptr))
        return 5;
      if (seen != pattern(bytes, std::stoul(args.at(4)))) return 3;
    }
    return kComplete;
  }

  if (role == "writer-stuck") {  // records behind a stream that never moves, then waits
    auto event = backend.create_event(0);
    auto stream = backend.create_stream(0);
    if (!event.ok() || !stream.ok()) return 1;
    static Gate never;  // never opened
    if (!never.block(stream.value())) return 2;
    if (!backend.record(event.value(), stream.value())) return 3;
    std::printf("%s\n", to_hex(event->handle).c_str());
    std::fflush(stdout);
    for (;;) ::pause();  // until SIGKILL
  }
  return 93;
}

std::unique_ptr<dev::Backend> g_backend;
int g_devices = 0;

}  // namespace

TEST_CASE("a block allocated here is opened by another process, which reads and writes it") {
  auto &backend = *g_backend;
  auto block = backend.allocate(0, kBytes, "shared");
  REQUIRE_MESSAGE(block.ok(), why(block));
  const auto before = pattern(kBytes, 1);
  REQUIRE(backend.copy(block->ptr, before.data(), kBytes, dev::CopyKind::kHostToDevice, 0, nullptr)
              .ok());
  REQUIRE(backend.synchronize(0, nullptr).ok());

  // The child also checks that a second open_block returns the same pointer, opened once.
  CHECK(wait_exit(spawn({"open-write", to_hex(block->handle), std::to_string(kBytes), "1", "2"})) ==
        0);

  std::vector<unsigned char> seen(kBytes);
  REQUIRE(
      backend.copy(seen.data(), block->ptr, kBytes, dev::CopyKind::kDeviceToHost, 0, nullptr).ok());
  REQUIRE(backend.synchronize(0, nullptr).ok());
  CHECK(seen == pattern(kBytes, 2));
  backend.free_block(block.value());
}

TEST_CASE("copies of every kind move the bytes, on the null stream and on a stream") {
  auto &backend = *g_backend;
  auto a = backend.allocate(0, kBytes, "a");
  auto b = backend.allocate(0, kBytes, "b");
  REQUIRE_MESSAGE(a.ok(), why(a));
  REQUIRE_MESSAGE(b.ok(), why(b));
  const auto src = pattern(kBytes, 3);
  for (bool on_stream : {false, true}) {
    CAPTURE(on_stream);
    dev::Stream stream = nullptr;
    if (on_stream) {
      auto s = backend.create_stream(0);
      REQUIRE_MESSAGE(s.ok(), why(s));
      stream = s.value();
    }
    std::vector<unsigned char> out(kBytes, 0);
    REQUIRE(backend.copy(a->ptr, src.data(), kBytes, dev::CopyKind::kHostToDevice, 0, stream).ok());
    REQUIRE(backend.copy(b->ptr, a->ptr, kBytes, dev::CopyKind::kDeviceToDevice, 0, stream).ok());
    REQUIRE(backend.copy(out.data(), b->ptr, kBytes, dev::CopyKind::kDeviceToHost, 0, stream).ok());
    REQUIRE(backend.synchronize(0, stream).ok());
    CHECK(out == src);
    if (stream != nullptr) backend.destroy_stream(0, stream);
  }
  backend.free_block(a.value());
  backend.free_block(b.value());
}

TEST_CASE("copy_peer replicates a block from one GPU to another") {
  auto &backend = *g_backend;
  if (g_devices < 2) {
    MESSAGE("skipped: one GPU only");
    return;
  }
  auto d0 = backend.allocate(0, kBytes, "rank0");
  auto d1 = backend.allocate(1, kBytes, "rank1");
  REQUIRE(d0.ok());
  REQUIRE(d1.ok());
  const auto src = pattern(kBytes, 4);
  REQUIRE(backend.copy(d0->ptr, src.data(), kBytes, dev::CopyKind::kHostToDevice, 0, nullptr).ok());
  REQUIRE(backend.synchronize(0, nullptr).ok());
  auto stream = backend.create_stream(0);
  REQUIRE(stream.ok());
  auto peer = backend.copy_peer(d1->ptr, 1, d0->ptr, 0, kBytes, stream.value());
  REQUIRE_MESSAGE(peer.ok(), why(peer));
  REQUIRE(backend.synchronize(0, stream.value()).ok());
  std::vector<unsigned char> out(kBytes);
  REQUIRE(backend.copy(out.data(), d1->ptr, kBytes, dev::CopyKind::kDeviceToHost, 1, nullptr).ok());
  REQUIRE(backend.synchronize(1, nullptr).ok());
  CHECK(out == src);
  backend.destroy_stream(0, stream.value());
  backend.free_block(d0.value());
  backend.free_block(d1.value());
}

TEST_CASE("a fresh event is complete, here and in another process") {
  auto &backend = *g_backend;
  auto event = backend.create_event(0);
  REQUIRE_MESSAGE(event.ok(), why(event));
  auto done = backend.query(event.value());
  REQUIRE_MESSAGE(done.ok(), why(done));
  CHECK(done.value());
  CHECK(wait_exit(spawn({"query-event", to_hex(event->handle)})) == kComplete);
  backend.destroy_event(event.value());
}

TEST_CASE(
    "an event recorded behind a held stream is pending in another process until the "
    "stream runs, and then the copies before it are visible") {
  auto &backend = *g_backend;
  auto block = backend.allocate(0, kBytes, "data");
  auto event = backend.create_event(0);
  auto stream = backend.create_stream(0);
  REQUIRE(block.ok());
  REQUIRE(event.ok());
  REQUIRE(stream.ok());
  Pinned host(kBytes);
  REQUIRE(host.data() != nullptr);
  const auto data = pattern(kBytes, 5);
  std::memcpy(host.data(), data.data(), kBytes);

  Gate gate;
  REQUIRE(gate.block(stream.value()));
  REQUIRE(
      backend.copy(block->ptr, host.data(), kBytes, dev::CopyKind::kHostToDevice, 0, stream.value())
          .ok());
  REQUIRE(backend.record(event.value(), stream.value()).ok());
  auto q = backend.query(event.value());
  REQUIRE(q.ok());
  CHECK_FALSE(q.value());
  const std::vector<std::string> consumer = {"query-event", to_hex(event->handle),
                                             to_hex(block->handle), std::to_string(kBytes), "5"};
  CHECK(wait_exit(spawn(consumer)) == kPending);

  gate.open();
  REQUIRE(backend.synchronize(0, stream.value()).ok());
  q = backend.query(event.value());
  REQUIRE(q.ok());
  CHECK(q.value());
  CHECK(wait_exit(spawn(consumer)) == kComplete);

  backend.destroy_stream(0, stream.value());
  backend.destroy_event(event.value());
  backend.free_block(block.value());
}

TEST_CASE(
    "the event of a writer killed before its stream reached the record is never "
    "reported complete, and a bounded wait gives up") {
  auto &backend = *g_backend;
  int out = -1;
  const pid_t writer = spawn({"writer-stuck"}, &out);
  REQUIRE(writer > 0);
  std::string line;
  char c;
  while (::read(out, &c, 1) == 1 && c != '\n') line += c;
  ::close(out);
  dev::IpcHandle handle;
  REQUIRE_MESSAGE(from_hex(line, &handle), "the writer printed no handle");

  auto event = backend.open_event(0, handle);
  REQUIRE_MESSAGE(event.ok(), why(event));
  auto q = backend.query(event.value());
  REQUIRE_MESSAGE(q.ok(), why(q));
  CHECK_FALSE(q.value());

  REQUIRE(::kill(writer, SIGKILL) == 0);
  CHECK(wait_exit(writer) == 128 + SIGKILL);

  // What the driver does with an event whose process died is its business: pending forever or
  // an error are both fine for the daemon, "complete" is not (it would validate a half-written
  // slot), and the wait must end.
  const auto start = std::chrono::steady_clock::now();
  auto waited = dev::wait_event(backend, event.value(), 500);
  const auto elapsed = std::chrono::steady_clock::now() - start;
  CHECK_FALSE(waited.ok());
  MESSAGE("after the writer died the wait ended with status ", waited.code(), ": ",
          waited.ok() ? std::string("complete") : waited.error().message);
  CHECK(elapsed < std::chrono::seconds(5));
  backend.destroy_event(event.value());
}

TEST_CASE("bad handles are refused with an error") {
  auto &backend = *g_backend;
  dev::IpcHandle zero{};
  CHECK(backend.open_block(0, zero, 16).error().code == LF_E_INVALID_ARGUMENT);
  CHECK(backend.open_event(0, zero).error().code == LF_E_INVALID_ARGUMENT);
  dev::IpcHandle garbage;
  std::memset(garbage.bytes, 0xab, sizeof garbage.bytes);
  auto r = backend.open_block(0, garbage, 16);
  CHECK_FALSE(r.ok());
  if (!r.ok()) MESSAGE("garbage block handle: ", r.error().message);
  auto e = backend.open_event(0, garbage);
  CHECK_FALSE(e.ok());
  if (!e.ok()) MESSAGE("garbage event handle: ", e.error().message);
  // A failing call is not sticky: the backend still works.
  auto block = backend.allocate(0, 4096, "after");
  CHECK_MESSAGE(block.ok(), why(block));
  if (block.ok()) backend.free_block(block.value());
}

TEST_CASE("check_slot on the GPU names the first tensor holding a NaN or an infinity") {
  auto &backend = *g_backend;
  auto block = backend.allocate(0, kBytes, "slots");
  REQUIRE_MESSAGE(block.ok(), why(block));
  slot_check_cases::nan_in_second_tensor_is_named(backend, 0, block->ptr + 8192);
  backend.free_block(block.value());
}

TEST_CASE("check_slot on the GPU gives the CPU functions' checksum and first non-finite element "
          "for every dtype and size") {
  auto &backend = *g_backend;
  constexpr uint64_t kRoom = uint64_t{17} << 20;  // the largest case: 2 Mi + 5 f64 elements
  auto block = backend.allocate(0, kRoom, "slots");
  REQUIRE_MESSAGE(block.ok(), why(block));
  slot_check_cases::results_equal_cpu(backend, 0, block->ptr, kRoom);
  backend.free_block(block.value());
}

TEST_CASE("check_slot on the GPU agrees with check_slot_cpu over hundreds of tensors of every "
          "dtype and size, and the lowest tensor with a hit wins") {
  namespace cases = slot_check_cases;
  auto &backend = *g_backend;
  std::mt19937_64 rng(11);
  const int dtypes[] = {LF_DTYPE_F32, LF_DTYPE_F16, LF_DTYPE_BF16, LF_DTYPE_F64,
                        LF_DTYPE_I8,  LF_DTYPE_U8,  LF_DTYPE_I32,  LF_DTYPE_I64};
  // As plan_slot lays a slot out, only less regularly: each tensor at a random multiple of its
  // element size past the last. One tensor of 1 Mi + 3 f16 elements (many chunks of the
  // kernel) among ~400 of 0 to 40 elements and a few around the kernel's 4096-element chunks;
  // a float tensor last.
  std::vector<dev::TensorExtent> tensors;
  uint64_t at = 0;
  auto add = [&](int dtype, uint64_t count) {
    const uint64_t es = loraflip::ipc::dtype_size(dtype);
    at = (at + es - 1) / es * es + es * (rng() % 3);
    tensors.push_back({at, count * es, dtype});
    at += count * es;
  };
  const uint64_t middling[] = {1, 4095, 4096, 4097, 9000};
  for (int i = 0; i < 400; ++i) {
    add(dtypes[rng() % 8], i % 20 == 0 ? middling[rng() % 5] : rng() % 41);
    if (i == 100) add(LF_DTYPE_F16, (uint64_t{1} << 20) + 3);
  }
  add(LF_DTYPE_BF16, 1);
  add(LF_DTYPE_F32, 777);
  const uint64_t slot_bytes = at + 5;  // a partial last word for the checksum
  const size_t last = tensors.size() - 1;
  auto block = backend.allocate(0, slot_bytes, "many");
  REQUIRE_MESSAGE(block.ok(), why(block));

  std::vector<unsigned char> host(slot_bytes);
  cases::fill_random(host, rng);
  for (const auto &t : tensors) {
    const size_t es = loraflip::ipc::dtype_size(t.dtype);
    const auto values = cases::random_elements(t.dtype, t.bytes / es, rng);
    if (!values.empty()) std::memcpy(host.data() + t.offset, values.data(), values.size());
  }
  // Makes element i of tensor t a NaN or an infinity (exponent all ones, the rest kept).
  auto plant = [&](size_t t, uint64_t i) {
    const dev::TensorExtent &e = tensors.at(t);
    const size_t es = loraflip::ipc::dtype_size(e.dtype);
    REQUIRE(i < e.bytes / es);
    uint64_t bits = 0;
    std::memcpy(&bits, host.data() + e.offset + i * es, es);
    bits |= cases::exponent_mask(e.dtype);
    std::memcpy(host.data() + e.offset + i * es, &bits, es);
  };
  const unsigned both = dev::kCheckFinite | dev::kCheckChecksum;
  auto same_as_cpu = [&](const std::vector<dev::TensorExtent> &list, unsigned checks) {
    cases::put(backend, 0, block->ptr, host.data(), slot_bytes);
    auto got = backend.check_slot(0, block->ptr, slot_bytes, list, checks);
    REQUIRE_MESSAGE(got.ok(), why(got));
    const dev::SlotCheck want = dev::check_slot_cpu(
        reinterpret_cast<const std::byte *>(host.data()), slot_bytes, list, checks);
    CHECK(got->tensor == want.tensor);
    CHECK(got->element == want.element);
    CHECK(got->bits == want.bits);
    CHECK(got->checksum == want.checksum);
    return want;
  };

  CHECK(same_as_cpu(tensors, both).tensor == -1);
  CHECK(same_as_cpu({}, both).checksum != 0);  // no tensors: the checksum alone
  CHECK(same_as_cpu({}, dev::kCheckFinite).tensor == -1);

  plant(last, 776);  // the last element of the last tensor
  CHECK(same_as_cpu(tensors, both).tensor == static_cast<int64_t>(last));
  plant(last - 1, 0);  // a one-element tensor just before it
  CHECK(same_as_cpu(tensors, dev::kCheckFinite).tensor == static_cast<int64_t>(last - 1));

  // The huge tensor's last element, then hits in many tensors: each time the lowest tensor
  // index with a hit is named, with its lowest element.
  size_t huge = 0;
  while (tensors[huge].bytes != ((uint64_t{1} << 20) + 3) * 2) ++huge;
  plant(huge, (uint64_t{1} << 20) + 2);
  CHECK(same_as_cpu(tensors, both).tensor == static_cast<int64_t>(huge));
  for (int round = 0; round < 5; ++round) {
    CAPTURE(round);
    for (int h = 0; h < 8; ++h) {
      const size_t t = rng() % tensors.size();
      const dev::TensorExtent &e = tensors[t];
      if (!cases::is_float(e.dtype) || e.bytes == 0) continue;
      plant(t, rng() % (e.bytes / loraflip::ipc::dtype_size(e.dtype)));
    }
    same_as_cpu(tensors, both);
  }
  backend.free_block(block.value());
}

TEST_CASE("check_slot on the GPU refuses bad tensor lists") {
  auto &backend = *g_backend;
  auto block = backend.allocate(0, 4096, "slots");
  REQUIRE_MESSAGE(block.ok(), why(block));
  slot_check_cases::bad_tensor_lists_are_refused(backend, 0, block->ptr);
  backend.free_block(block.value());
}

TEST_CASE("check_slot on a second GPU runs there") {
  auto &backend = *g_backend;
  if (g_devices < 2) {
    MESSAGE("skipped: one GPU only");
    return;
  }
  auto block = backend.allocate(1, kBytes, "slots1");
  REQUIRE_MESSAGE(block.ok(), why(block));
  slot_check_cases::nan_in_second_tensor_is_named(backend, 1, block->ptr);
  backend.free_block(block.value());
}

TEST_CASE("every call leaves the calling thread on the device it was on") {
  // The library runs on its users' threads: after each call, cudaGetDevice must give what it
  // gave before. With one GPU, only that nothing switched to another.
  auto &backend = *g_backend;
  const int devices = std::min(g_devices, 2);
  for (int mine = devices - 1; mine >= 0; --mine) {
    CAPTURE(mine);
    REQUIRE(cudaSetDevice(mine) == cudaSuccess);
    auto same = [&](const std::string &call, bool ok) {
      int now = -1;
      CHECK_MESSAGE((cudaGetDevice(&now) == cudaSuccess && now == mine), call);
      REQUIRE_MESSAGE(ok, call);
    };
    for (int d = 0; d < devices; ++d) {
      CAPTURE(d);
      auto block = backend.allocate(d, 4096, "current");
      same("allocate", block.ok());
      const auto data = pattern(4096, 5);
      same("copy", backend.copy(block->ptr, data.data(), 4096, dev::CopyKind::kHostToDevice, d,
                                nullptr)
                       .ok());
      auto stream = backend.create_stream(d);
      same("create_stream", stream.ok());
      auto event = backend.create_event(d);
      same("create_event", event.ok());
      same("record", backend.record(event.value(), stream.value()).ok());
      same("query", backend.query(event.value()).ok());
      same("synchronize", backend.synchronize(d, stream.value()).ok());
      const dev::TensorExtent whole{0, 4096, LF_DTYPE_F32};
      same("check_slot",
           backend.check_slot(d, block->ptr, 4096, {&whole, 1}, dev::kCheckFinite).ok());
      if (d + 1 < devices) {
        auto other = backend.allocate(d + 1, 4096, "current-peer");
        same("allocate", other.ok());
        same("copy_peer", backend.copy_peer(other->ptr, d + 1, block->ptr, d, 4096, nullptr).ok());
        same("synchronize", backend.synchronize(d, nullptr).ok());
        backend.free_block(other.value());
        same("free_block", true);
      }
      backend.destroy_event(event.value());
      same("destroy_event", true);
      backend.destroy_stream(d, stream.value());
      same("destroy_stream", true);
      backend.free_block(block.value());
      same("free_block", true);
    }
  }
  REQUIRE(cudaSetDevice(0) == cudaSuccess);
}

int main(int argc, char **argv) {
  if (argc >= 3 && std::string(argv[1]) == "--child")
    return run_child(std::vector<std::string>(argv + 2, argv + argc));

  auto made = dev::make_cuda_backend();
  if (!made.ok()) {
    std::printf("SKIP: %s\n", made.error().message.c_str());
    return 77;
  }
  auto count = made.value()->device_count();
  if (!count.ok()) {
    std::printf("SKIP: no usable GPU: %s\n", count.error().message.c_str());
    return 77;
  }
  g_devices = count.value();
  g_backend = std::move(made).value();
  dev::install_cuda_check_kernels();  // as the daemon does; children never check slots
  doctest::Context context(argc, argv);
  const int code = context.run();
  g_backend.reset();
  return code;
}
