// The daemon's commit checks of a device adapter on a real GPU: the registry over device arenas
// of the CUDA implementation, with the cases of the device-adapter test in
// tests/unit/test_registry.cpp (host stand-in). The checks run on the GPU (Backend::check_slot);
// the writes here are plain cudaMemcpy, as a trainer's would be.
//
// Exits 77 (meson: skipped) with the reason when no usable GPU is present.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include <cuda_runtime.h>

#include "daemon/registry.hpp"
#include "kernels/validate.hpp"
#include "tests/unit/support.hpp"

using namespace loraflip;
using daemon::CommitRequest;
using daemon::CreateRequest;
using daemon::Lease;
using daemon::Registry;

namespace {

daemon::Requester self() {
  return {static_cast<uint64_t>(::getpid()), ipc::process_start_time(::getpid())};
}

constexpr uint64_t kT0 = 1'000'000'000'000ULL;  // an arbitrary "now" on the monotonic clock
int g_devices = 0;

// A registry serving GPU 0 (and 1 when there is one) through the CUDA implementation.
struct GpuFixture {
  test::ScopedInstance instance;
  std::optional<Registry> reg;
  std::vector<int> ordinals;

  GpuFixture() {
    bool created = false;
    Result<ipc::Arena> arena =
        ipc::Arena::open_or_create(test::small_config(instance.name), &created);
    REQUIRE_MESSAGE(arena.ok(), test::why(arena));
    auto backend = device::make_cuda_backend();
    REQUIRE_MESSAGE(backend.ok(), test::why(backend));
    ordinals = g_devices >= 2 ? std::vector<int>{0, 1} : std::vector<int>{0};
    Result<daemon::DeviceSet> devices = daemon::DeviceSet::open(
        std::move(backend).value(), ordinals, uint64_t{64} << 20, daemon::kDeviceArenaTag);
    REQUIRE_MESSAGE(devices.ok(), test::why(devices));
    Result<Registry> r = Registry::open(std::move(arena).value(), std::move(devices).value());
    REQUIRE_MESSAGE(r.ok(), test::why(r));
    reg.emplace(std::move(r).value());
  }
  Registry &r() { return *reg; }
  std::byte *slot(const Lease &lease) { return reg->devices().base(0) + lease.data_offset; }
};

template <typename T>
void upload(std::byte *device_ptr, const std::vector<T> &values) {
  REQUIRE(cudaMemcpy(device_ptr, values.data(), values.size() * sizeof(T),
                     cudaMemcpyHostToDevice) == cudaSuccess);
}

std::vector<unsigned char> download(const std::byte *device_ptr, uint64_t bytes) {
  std::vector<unsigned char> out(bytes);
  REQUIRE(cudaMemcpy(out.data(), device_ptr, bytes, cudaMemcpyDeviceToHost) == cudaSuccess);
  return out;
}

}  // namespace

TEST_CASE("a device adapter's commit checks run on the GPU and answer as on the host") {
  GpuFixture f;
  CreateRequest q;
  q.name = "gpu";
  // A f32 A [4, 64], an f16 B [64, 4], and a bf16 bias [67] that ends off the 8-byte grid.
  q.tensors = {{"base_model.model.layers.0.q_proj.lora_A.weight", LF_DTYPE_F32, {4, 64}},
               {"base_model.model.layers.0.q_proj.lora_B.weight", LF_DTYPE_F16, {64, 4}},
               {"base_model.model.layers.0.q_proj.bias", LF_DTYPE_BF16, {67}}};
  q.rank = 4;
  q.alpha = 8;
  q.devices = f.ordinals;
  REQUIRE(f.r().create(q).ok());
  const ipc::AdapterRecord &rec = f.r().arena().adapter(*f.r().find("gpu"));
  const ipc::TensorDesc *d = f.r().arena().tensors(rec);
  const uint32_t both = LF_COMMIT_CHECK_FINITE | LF_COMMIT_CHECKSUM;

  auto lease_of = [&] {
    Result<Lease> lease = f.r().begin_write(
        {"gpu", 30000, static_cast<uint64_t>(::getpid()), ipc::process_start_time(::getpid())},
        kT0);
    REQUIRE_MESSAGE(lease.ok(), test::why(lease));
    return lease.value();
  };
  std::vector<float> a(d[0].nbytes / 4);
  for (size_t i = 0; i < a.size(); ++i) a[i] = 0.5f + static_cast<float>(i);
  std::vector<uint16_t> b(d[1].nbytes / 2, 0x3C00);    // 1.0 in f16
  std::vector<uint16_t> bias(d[2].nbytes / 2, 0x3F80);  // 1.0 in bf16
  auto write = [&](const Lease &lease) {
    upload(f.slot(lease) + d[0].offset, a);
    upload(f.slot(lease) + d[1].offset, b);
    upload(f.slot(lease) + d[2].offset, bias);
  };

  SUBCASE("a NaN in the second tensor is refused, naming the tensor, element and value") {
    const Lease lease = lease_of();
    b[5] = 0x7E00;  // f16 NaN
    write(lease);
    auto bad = f.r().commit({lease.id, both, std::nullopt, std::nullopt, self(), std::nullopt}, kT0);
    REQUIRE_FALSE(bad.ok());
    CHECK(bad.error().code == LF_E_VALIDATION);
    CHECK(bad.error().message == "tensor 'base_model.model.layers.0.q_proj.lora_B.weight' holds "
                                 "NaN at element 5 (f16 bits 0x7e00)");
    CHECK(rec.active.load() == 0);
  }
  SUBCASE("an infinity in the last tensor, at its last element, is found") {
    const Lease lease = lease_of();
    bias.back() = 0xFF80;  // bf16 -infinity
    write(lease);
    auto bad = f.r().commit({lease.id, LF_COMMIT_CHECK_FINITE, std::nullopt, std::nullopt, self(), std::nullopt}, kT0);
    REQUIRE_FALSE(bad.ok());
    CHECK(bad.error().message.find("bias' holds -infinity at element 66") != std::string::npos);
  }
  SUBCASE("the checksum of the whole slot equals the CPU's, a right one commits, a wrong one "
          "does not") {
    const Lease lease = lease_of();
    write(lease);
    const uint64_t sum = kernels::checksum(download(f.slot(lease), lease.slot_bytes).data(),
                                           lease.slot_bytes);
    auto wrong = f.r().commit({lease.id, both, sum + 1, std::nullopt, self(), std::nullopt}, kT0);
    REQUIRE_FALSE(wrong.ok());
    CHECK(wrong.error().message.find("checksum mismatch") != std::string::npos);
    CHECK(rec.active.load() == 0);

    const Lease again = lease_of();
    write(again);
    const uint64_t sum2 = kernels::checksum(download(f.slot(again), again.slot_bytes).data(),
                                            again.slot_bytes);
    auto right = f.r().commit({again.id, both, sum2, std::nullopt, self(), std::nullopt}, kT0);
    REQUIRE_MESSAGE(right.ok(), test::why(right));
    CHECK(right->checksum == sum2);
    CHECK(ipc::active_version(rec.active.load()) == 1);
  }
}

int main(int argc, char **argv) {
  auto made = device::make_cuda_backend();
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
  made.value().reset();  // each test makes its own, as the daemon does once
  doctest::Context context(argc, argv);
  return context.run();
}
