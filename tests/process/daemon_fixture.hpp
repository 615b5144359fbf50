// What the daemon's multi-process tests (daemon_test.cpp, daemon_access_test.cpp,
// daemon_flow_test.cpp) share: a raw peer on the control socket, the requests it sends and the
// replies it reads, and a client's publish and snapshot.
#pragma once

#include <doctest/doctest.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <zmq.hpp>

#include "ipc/paths.hpp"
#include "ipc/protocol.hpp"
#include "loraflip.h"

namespace daemon_fixture {

namespace ipc = loraflip::ipc;

// A raw DEALER, to send what no well-behaved client would.
struct RawPeer {
  zmq::context_t context{1};
  zmq::socket_t socket{context, zmq::socket_type::dealer};
  explicit RawPeer(const std::string &dir) {
    socket.set(zmq::sockopt::linger, 0);
    socket.connect(ipc::control_endpoint(dir));
  }
  // Sends one body; returns the reply body, or "" when none came within timeout_ms.
  std::string exchange(const std::string &body, int timeout_ms = 2000) {
    return exchange_frames({body}, timeout_ms);
  }
  // Sends the empty delimiter, then `frames` as one multi-frame message.
  std::string exchange_frames(const std::vector<std::string> &frames, int timeout_ms = 2000) {
    socket.send(zmq::message_t(), zmq::send_flags::sndmore);
    for (size_t i = 0; i < frames.size(); ++i)
      socket.send(zmq::buffer(frames[i]),
                  i + 1 < frames.size() ? zmq::send_flags::sndmore : zmq::send_flags::none);
    zmq::pollitem_t item{socket.handle(), 0, ZMQ_POLLIN, 0};
    if (zmq::poll(&item, 1, std::chrono::milliseconds(timeout_ms)) == 0) return "";
    zmq::message_t delimiter, reply;
    REQUIRE(socket.recv(delimiter));
    REQUIRE(socket.recv(reply));
    return reply.to_string();
  }
};

// The error code of a reply, or 0 for success.
inline int reply_code(const std::string &reply) {
  auto decoded = ipc::decode(reply.data(), reply.size());
  REQUIRE(decoded);
  auto root = ipc::MapView::of(decoded->get(), "reply");
  REQUIRE(root);
  if (root->boolean("ok").value()) return 0;
  return static_cast<int>(root->map("error").value().integer("code").value());
}

// The id of a reply.
inline uint64_t reply_id(const std::string &reply) {
  auto decoded = ipc::decode(reply.data(), reply.size());
  REQUIRE(decoded);
  return ipc::MapView::of(decoded->get(), "reply").value().uint("id").value();
}

inline std::string request(std::string_view op, const ipc::Encoder &args) {
  return ipc::encode_request(op, 7, {args.data(), args.size()});
}

inline std::string snapshot(lf_client_t *client) {
  char *json = nullptr;
  REQUIRE(lf_client_list(client, &json) == LF_OK);
  std::string s(json);
  lf_free(json);
  char *info = nullptr;
  REQUIRE(lf_client_info(client, "steady", &info) == LF_OK);
  s += info;
  lf_free(info);
  return s;
}

inline uint64_t publish_value(lf_client_t *client, const char *name, float value) {
  lf_writer_t *w = nullptr;
  REQUIRE(lf_client_begin_write(client, name, 0, &w) == LF_OK);
  const size_t n = lf_writer_tensor_count(w);
  for (size_t t = 0; t < n; ++t) {
    lf_tensor_view_t v;
    lf_writer_tensor(w, t, &v);
    for (uint64_t i = 0; i < v.nbytes / 4; ++i) static_cast<float *>(v.data)[i] = value;
  }
  uint64_t version = 0;
  REQUIRE(lf_writer_commit(w, LF_COMMIT_CHECK_FINITE | LF_COMMIT_CHECKSUM, &version) == LF_OK);
  return version;
}


}  // namespace daemon_fixture
