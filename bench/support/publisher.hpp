// Publishing versions of an adapter and timing each one until a reader process sees it: the
// publish figures of lf-bench-core (against memcpy) and lf-bench-scaling (against the size).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "bench_support.hpp"
#include "loraflip.h"
#include "observer.hpp"

namespace lfbench {

// One f16 tensor of 4 KiB ([1, 2048], the lora_A of layer 0's q_proj, rank 1): the adapter of
// the flip figures, whose copy costs next to nothing.
std::vector<loraflip::testbed::TensorShape> flip_tensors();

// Publishes versions of one adapter from a prepared source buffer, each timed from
// begin_write to the observer seeing it.
struct Publisher {
  lf_client_t *client;
  Observer &observer;
  std::string name;
  std::vector<uint64_t> offsets;  // of each tensor in the prepared source buffer
  std::vector<uint64_t> sizes;
  const std::byte *src;
  uint64_t last_version = 0;

  struct Timing {
    uint64_t total_ns;       // begin_write .. visible to the observer
    uint64_t begin_ns;       // begin_write request
    uint64_t copy_ns;        // lf_writer_copy_in of every tensor
    uint64_t visible_ns;     // commit request .. visible to the observer
    uint64_t commit_rtt_ns;  // commit request .. its reply
    uint64_t commit_at_ns;   // when the commit request left (now_ns), to time what follows
  };

  Timing publish();
};

// The source and destination of the copies, big enough for the largest size: page-aligned and
// written once, so that neither the publish nor the plain memcpy pays for first-touch page
// faults in what it reads.
class CopyBuffers {
 public:
  explicit CopyBuffers(uint64_t bytes);
  ~CopyBuffers();
  CopyBuffers(const CopyBuffers &) = delete;
  CopyBuffers &operator=(const CopyBuffers &) = delete;

  std::byte *src = nullptr;
  std::byte *dst = nullptr;
};

// One size's publishes (times in ns).
struct PublishFigures {
  uint64_t mib;
  size_t tensors;
  size_t reps;
  Stats total;    // the whole publish
  Stats memcpy_;  // one memcpy of the same bytes
  Stats chunked;  // the same bytes in one memcpy per tensor
  Stats begin, copy, visible;  // the parts of the publish (Publisher::Timing)
};

// Creates adapter "bench-publish-<mib>m" (PEFT-like, `mib` MiB of f16), warms its ring, then
// `reps` publishes interleaved with the plain copies. The observer must be in kWatch.
PublishFigures measure_publish(lf_client_t *client, Observer &observer, uint64_t mib,
                               size_t reps, const CopyBuffers &buffers);

}  // namespace lfbench
