#include "publisher.hpp"

#include <atomic>
#include <cstdlib>
#include <cstring>

#include "testbed/adapters.hpp"

namespace lfbench {

namespace testbed = loraflip::testbed;

namespace {

struct PlainCopies {
  double whole_ns;       // one memcpy of all the bytes
  double per_tensor_ns;  // one memcpy per tensor, as lf_writer_copy_in does
};

// The baseline of the publish figures: the publisher's bytes from buffers.src to buffers.dst,
// heap to heap, once in one memcpy and once tensor by tensor (glibc picks its copy strategy,
// non-temporal stores or not, by the size of each call).
PlainCopies time_plain_copies(const CopyBuffers &buffers, const Publisher &p, uint64_t bytes) {
  PlainCopies c;
  uint64_t t0 = now_ns();
  std::memcpy(buffers.dst, buffers.src, bytes);
  std::atomic_signal_fence(std::memory_order_seq_cst);
  c.whole_ns = double(now_ns() - t0);
  t0 = now_ns();
  for (size_t i = 0; i < p.sizes.size(); ++i)
    std::memcpy(buffers.dst + p.offsets[i], buffers.src + p.offsets[i], p.sizes[i]);
  std::atomic_signal_fence(std::memory_order_seq_cst);
  c.per_tensor_ns = double(now_ns() - t0);
  return c;
}

}  // namespace

std::vector<testbed::TensorShape> flip_tensors() {
  testbed::TensorShape one;
  one.name = testbed::peft_lora_name(0, "q_proj", false);
  one.shape[0] = 1;
  one.shape[1] = 2048;
  one.nbytes = 4096;
  return {one};
}

Publisher::Timing Publisher::publish() {
  const uint64_t expect = last_version + 1;
  const uint64_t t0 = now_ns();
  lf_writer_t *w = nullptr;
  check(lf_client_begin_write(client, name.c_str(), 0, &w), "begin_write " + name, client);
  const uint64_t t1 = now_ns();
  for (size_t i = 0; i < sizes.size(); ++i)
    check(lf_writer_copy_in(w, i, src + offsets[i], sizes[i]), "copy_in");
  const uint64_t t2 = now_ns();
  uint64_t version = 0;
  check(lf_writer_commit(w, 0, &version), "commit " + name, client);
  const uint64_t t3 = now_ns();
  if (version != expect)
    fail("commit of " + name + " got version " + std::to_string(version) + ", expected " +
         std::to_string(expect));
  const uint64_t tv = wait_seen(observer, expect);
  last_version = version;
  return {tv - t0, t1 - t0, t2 - t1, tv - t2, t3 - t2, t2};
}

CopyBuffers::CopyBuffers(uint64_t bytes) {
  src = static_cast<std::byte *>(std::aligned_alloc(4096, bytes));
  dst = static_cast<std::byte *>(std::aligned_alloc(4096, bytes));
  if (src == nullptr || dst == nullptr) {
    std::free(src);
    std::free(dst);
    fail("cannot allocate the copy buffers");
  }
  for (uint64_t i = 0; i < bytes / 2; ++i)  // f16 values in [0.5, 2)
    reinterpret_cast<uint16_t *>(src)[i] = uint16_t(0x3800 + (i * 2654435761u >> 7) % 0x800);
  std::memset(dst, 0, bytes);
}

CopyBuffers::~CopyBuffers() {
  std::free(src);
  std::free(dst);
}

PublishFigures measure_publish(lf_client_t *client, Observer &observer, uint64_t mib,
                               size_t reps, const CopyBuffers &buffers) {
  const auto tensors = testbed::peft_attention_lora_of_mib(mib);
  const std::string name = "bench-publish-" + std::to_string(mib) + "m";
  create_lora_adapter(client, name, tensors, int(tensors[0].shape[0]));
  observe(observer, name);
  Publisher p{client, observer, name, {}, {}, buffers.src};
  uint64_t bytes = 0;
  for (const auto &t : tensors) {
    p.offsets.push_back(bytes);
    p.sizes.push_back(t.nbytes);
    bytes += t.nbytes;
  }
  // Warm-up: every slot of the ring written at least once (first writes page-fault the fresh
  // shared memory), and the plain copy's buffers too.
  for (int i = 0; i < 8; ++i) p.publish();
  for (int i = 0; i < 2; ++i) std::memcpy(buffers.dst, buffers.src, bytes);

  std::vector<double> total, plain, chunked, begin, copy, visible;
  auto time_baseline = [&] {
    const PlainCopies c = time_plain_copies(buffers, p, bytes);
    plain.push_back(c.whole_ns);
    chunked.push_back(c.per_tensor_ns);
  };
  for (size_t r = 0; r < reps; ++r) {
    if (r % 2) time_baseline();  // alternate the order: neither always runs second
    const Publisher::Timing t = p.publish();
    total.push_back(double(t.total_ns));
    begin.push_back(double(t.begin_ns));
    copy.push_back(double(t.copy_ns));
    visible.push_back(double(t.visible_ns));
    if (r % 2 == 0) time_baseline();
  }
  return {mib,
          tensors.size(),
          reps,
          stats_of(total),
          stats_of(plain),
          stats_of(chunked),
          stats_of(begin),
          stats_of(copy),
          stats_of(visible)};
}

}  // namespace lfbench
