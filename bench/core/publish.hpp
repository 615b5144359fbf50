// Figure 2 (flip, against a bare ZeroMQ round trip); figure 1 (publish, against memcpy) is
// measure_publish of bench/support/publisher.hpp. Both time the same thing, one version
// published through the client library and seen by the observer.
#pragma once

#include <cstddef>
#include <string>

#include "bench_support.hpp"
#include "loraflip.h"
#include "observer.hpp"
#include "publisher.hpp"

namespace lfbench::core {

// The adapter of figure 2, which figure 3 acquires too: one 4 KiB tensor (flip_tensors).
inline const std::string kFlipAdapter = "bench-flip";

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
