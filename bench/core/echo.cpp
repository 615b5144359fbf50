#include "echo.hpp"

#include <vector>

#include <zmq.h>

#include "bench_support.hpp"

namespace lfbench::core {

int echo_main(const std::string &endpoint, std::atomic<uint32_t> &ready) {
  void *ctx = zmq_ctx_new();
  void *router = zmq_socket(ctx, ZMQ_ROUTER);
  int zero = 0;
  zmq_setsockopt(router, ZMQ_LINGER, &zero, sizeof zero);
  if (zmq_bind(router, endpoint.c_str()) != 0) return 1;
  ready.store(1);
  std::vector<zmq_msg_t> frames(8);
  for (;;) {
    size_t n = 0;
    int more = 1;
    while (more && n < frames.size()) {
      zmq_msg_init(&frames[n]);
      if (zmq_msg_recv(&frames[n], router, 0) < 0) return 2;
      more = zmq_msg_more(&frames[n]);
      ++n;
    }
    for (size_t i = 0; i < n; ++i)
      zmq_msg_send(&frames[i], router, i + 1 < n ? ZMQ_SNDMORE : 0);  // send takes ownership
  }
}

EchoRoundTrip::EchoRoundTrip(const std::string &endpoint) {
  ctx_ = zmq_ctx_new();
  dealer_ = zmq_socket(ctx_, ZMQ_DEALER);
  int zero = 0;
  zmq_setsockopt(dealer_, ZMQ_LINGER, &zero, sizeof zero);
  if (zmq_connect(dealer_, endpoint.c_str()) != 0) {
    zmq_close(dealer_);
    zmq_ctx_term(ctx_);
    fail("cannot connect to the echo process");
  }
}

EchoRoundTrip::~EchoRoundTrip() {
  zmq_close(dealer_);
  zmq_ctx_term(ctx_);
}

uint64_t EchoRoundTrip::time_ns() {
  char buf[256];
  const uint64_t t0 = now_ns();
  // DEALER -> ROUTER with an empty delimiter first, as the client library does.
  if (zmq_send(dealer_, "", 0, ZMQ_SNDMORE) < 0 ||
      zmq_send(dealer_, payload_.data(), payload_.size(), 0) < 0)
    fail("zmq send to the echo process");
  if (zmq_recv(dealer_, buf, sizeof buf, 0) < 0 || zmq_recv(dealer_, buf, sizeof buf, 0) < 0)
    fail("zmq receive from the echo process");
  return now_ns() - t0;
}

}  // namespace lfbench::core
