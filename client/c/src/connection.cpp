#include "connection.hpp"

#include <chrono>
#include <unistd.h>

#include "ipc/paths.hpp"

namespace loraflip::client {
namespace {

const msgpack::object *field(const msgpack::object &map, std::string_view key) {
  if (map.type != msgpack::type::MAP) return nullptr;
  for (uint32_t i = 0; i < map.via.map.size; ++i) {
    const msgpack::object &k = map.via.map.ptr[i].key;
    if (k.type == msgpack::type::STR && std::string_view(k.via.str.ptr, k.via.str.size) == key)
      return &map.via.map.ptr[i].val;
  }
  return nullptr;
}

}  // namespace

std::string resolve_runtime_dir(const char *runtime_dir) {
  if (runtime_dir != nullptr && *runtime_dir != '\0') return runtime_dir;
  return ipc::default_runtime_dir("default");
}

const msgpack::object &result_of(const msgpack::object_handle &reply) {
  return *field(reply.get(), "result");
}

Result<Connection> Connection::open(const std::string &runtime_dir, int timeout_ms) {
  Connection c;
  c.runtime_dir_ = runtime_dir;
  c.timeout_ms_ = timeout_ms > 0 ? timeout_ms : 5000;
  if (::access((runtime_dir + "/control").c_str(), F_OK) != 0)
    return make_error(LF_E_CONNECTION, "no loraflipd control socket in " + runtime_dir +
                                           " (is the daemon running? is this its runtime "
                                           "directory?)");
  try {
    c.context_ = std::make_unique<zmq::context_t>(1);
    c.socket_ = std::make_unique<zmq::socket_t>(*c.context_, zmq::socket_type::dealer);
    c.socket_->set(zmq::sockopt::linger, 0);
    // Without a live connection, fail the send instead of queueing for a daemon that is gone.
    c.socket_->set(zmq::sockopt::immediate, 1);
    c.socket_->set(zmq::sockopt::sndtimeo, c.timeout_ms_);
    c.socket_->set(zmq::sockopt::maxmsgsize, ipc::kMaxReplyBytes);
    c.socket_->connect(ipc::control_endpoint(runtime_dir));
  } catch (const zmq::error_t &e) {
    return make_error(LF_E_CONNECTION, std::string("cannot connect to ") + runtime_dir + ": " + e.what());
  }
  Result<ipc::msg::HelloResult> hello =
      c.call<ipc::msg::HelloResult>(ipc::msg::Hello{ipc::kProtocolVersion});
  if (!hello) return hello.error();
  c.hello_ = Hello{hello->instance, hello->version, hello->control_segment, hello->data_segment};
  if (c.hello_.control_segment.empty())
    return make_error(LF_E_PROTOCOL, "the daemon's hello did not name its arena");
  return c;
}

Result<msgpack::object_handle> Connection::request(std::string_view op, std::string_view args) {
  const uint64_t id = next_id_++;
  const std::string message = ipc::encode_request(op, id, args);
  if (message.size() > ipc::kMaxMessageBytes)
    return make_error(LF_E_TOO_LARGE, "the '" + std::string(op) + "' request is " +
                                          std::to_string(message.size()) +
                                          " bytes, over the daemon's limit of " +
                                          std::to_string(ipc::kMaxMessageBytes));
  try {
    // DEALER to ROUTER: an empty delimiter frame first, as a REQ socket would send.
    if (!socket_->send(zmq::message_t(), zmq::send_flags::sndmore) ||
        !socket_->send(zmq::buffer(message), zmq::send_flags::none))
      return make_error(LF_E_CONNECTION, "the daemon at " + runtime_dir_ + " is not reachable");
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms_);
    while (true) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      zmq::pollitem_t item{socket_->handle(), 0, ZMQ_POLLIN, 0};
      if (left.count() <= 0 || zmq::poll(&item, 1, left) == 0)
        return make_error(LF_E_TIMEOUT, "no reply to '" + std::string(op) + "' from the daemon within " +
                                            std::to_string(timeout_ms_) + " ms");
      zmq::message_t frame;
      zmq::message_t body;
      // Frames: the empty delimiter, then the reply.
      if (!socket_->recv(frame, zmq::recv_flags::dontwait)) continue;
      if (frame.size() != 0 || !frame.more()) continue;
      if (!socket_->recv(body, zmq::recv_flags::dontwait)) continue;
      auto decoded = ipc::decode(body.data(), body.size(), ipc::kMaxReplyBytes);
      if (!decoded) return make_error(LF_E_PROTOCOL, "undecodable reply: " + decoded.error().message);
      const msgpack::object &root = decoded->get();
      const msgpack::object *reply_id = field(root, "id");
      const msgpack::object *ok = field(root, "ok");
      const bool is_error = ok != nullptr && ok->type == msgpack::type::BOOLEAN && !ok->via.boolean;
      const uint64_t answered = reply_id != nullptr && reply_id->type == msgpack::type::POSITIVE_INTEGER
                                    ? reply_id->via.u64
                                    : 0;
      // Id 0 on an error: the daemon could not read this request's id (it reads it whenever
      // the bytes allow). Calls on a connection are serialized, so it answers this request.
      if (answered != id && !(answered == 0 && is_error))
        continue;  // a late reply to a request that timed out earlier
      if (ok != nullptr && ok->type == msgpack::type::BOOLEAN && ok->via.boolean) {
        if (field(root, "result") == nullptr) return make_error(LF_E_PROTOCOL, "reply without result");
        return std::move(decoded).value();
      }
      const msgpack::object *err = field(root, "error");
      auto view = err ? ipc::MapView::of(*err, "error") : Result<ipc::MapView>(make_error(LF_E_PROTOCOL, "error reply without error"));
      if (!view) return view.error();
      auto code = view->integer_or("code", LF_E_PROTOCOL);
      auto text = view->str_or("message", "");
      return make_error(code ? static_cast<int>(code.value()) : LF_E_PROTOCOL,
                        text ? std::string(text.value()) : std::string("error"));
    }
  } catch (const zmq::error_t &e) {
    return make_error(LF_E_CONNECTION, std::string("ZeroMQ: ") + e.what());
  }
}

}  // namespace loraflip::client
