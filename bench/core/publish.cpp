#include "publish.hpp"

#include <vector>

#include "echo.hpp"

namespace lfbench::core {

FlipFigures measure_flip(lf_client_t *client, Observer &observer,
                         const std::string &echo_endpoint, size_t reps) {
  create_lora_adapter(client, kFlipAdapter, flip_tensors(), 1);
  observe(observer, kFlipAdapter);
  std::vector<std::byte> src(4096, std::byte{0x3c});
  Publisher p{client, observer, kFlipAdapter, {0}, {4096}, src.data()};
  EchoRoundTrip echo(echo_endpoint);

  for (int i = 0; i < 20; ++i) {
    p.publish();
    echo.time_ns();
  }
  std::vector<double> vis, rtt, zrt;
  for (size_t r = 0; r < reps; ++r) {
    if (r % 2) zrt.push_back(double(echo.time_ns()));
    const Publisher::Timing t = p.publish();
    vis.push_back(double(t.visible_ns));
    rtt.push_back(double(t.commit_rtt_ns));
    if (r % 2 == 0) zrt.push_back(double(echo.time_ns()));
  }
  return {reps, stats_of(vis), stats_of(rtt), stats_of(zrt)};
}

}  // namespace lfbench::core
