// Figures 1 (publish, against memcpy) and 2 (flip, against a bare ZeroMQ round trip): both time
// the same thing, one version published through the client library and seen by the observer.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "bench_support.hpp"
#include "loraflip.h"
#include "observer.hpp"

namespace lfbench::core {

// The adapter of figure 2, which figure 3 acquires too: one 4 KiB tensor.
inline const std::string kFlipAdapter = "bench-flip";

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

// One row of figure 1 (times in ns).
struct PublishFigures {
  uint64_t mib;
  size_t tensors;
  size_t reps;
  Stats total;    // the whole publish
  Stats memcpy_;  // one memcpy of the same bytes
  Stats chunked;  // the same bytes in one memcpy per tensor
  Stats begin, copy, visible;  // the parts of the publish (Publisher::Timing)
};

// Figure 1 for one size: creates adapter "bench-publish-<mib>m" (PEFT-like, `mib` MiB of f16),
// warms its ring, then `reps` publishes interleaved with the plain copies. The observer must be
// in kWatch.
PublishFigures measure_publish(lf_client_t *client, Observer &observer, uint64_t mib,
                               size_t reps, const CopyBuffers &buffers);

// Figure 2 (times in ns).
struct FlipFigures {
  size_t reps;
  Stats visible;     // commit request .. visible to the observer
  Stats commit_rtt;  // commit request .. its reply
  Stats zmq_rtt;     // the bare ZeroMQ round trip to the echo process
};

// Figure 2: creates kFlipAdapter, then `reps` publishes interleaved with round trips to the
// echo process at `echo_endpoint`. The observer must be in kWatch.
FlipFigures measure_flip(lf_client_t *client, Observer &observer,
                         const std::string &echo_endpoint, size_t reps);

}  // namespace lfbench::core
