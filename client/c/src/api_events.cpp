// The C ABI, events: a subscription to the daemon's flip notices (commit, rollback, drop),
// with the gaps the socket dropped counted per adapter.
#include <chrono>
#include <cstring>
#include <iterator>
#include <memory>
#include <string>
#include <string_view>
#include <unistd.h>
#include <unordered_map>
#include <vector>

#include <zmq.hpp>
#include <zmq_addon.hpp>

#include "api_internal.hpp"
#include "connection.hpp"
#include "ipc/paths.hpp"
#include "ipc/protocol.hpp"
#include "ipc/schema.hpp"
#include "loraflip.h"

struct lf_events {
  zmq::context_t context{1};
  zmq::socket_t socket{context, zmq::socket_type::sub};
  std::unordered_map<std::string, uint64_t> last_seq;  // per adapter, for lf_event_t::missed
};

extern "C" {

int lf_events_open(const char *runtime_dir, const char *adapter, lf_events_t **out) {
  return guarded(&t_last_error, [&] {
    if (out == nullptr) return invalid(&t_last_error, "out is NULL");
    if (adapter != nullptr) {
      if (Status s = ipc::check_adapter_name(adapter); !s) return fail(&t_last_error, s.error());
    }
    const std::string dir = client::resolve_runtime_dir(runtime_dir);
    if (::access((dir + "/events").c_str(), F_OK) != 0)
      return fail(&t_last_error, make_error(LF_E_CONNECTION, "no loraflipd events socket in " + dir));
    auto events = std::make_unique<lf_events>();
    events->socket.set(zmq::sockopt::linger, 0);
    events->socket.set(zmq::sockopt::maxmsgsize, int64_t{1} << 20);
    events->socket.set(zmq::sockopt::subscribe,
                       adapter == nullptr ? std::string(ipc::kEventTopicAll) : ipc::event_topic(adapter));
    events->socket.connect(ipc::events_endpoint(dir));
    *out = events.release();
    return LF_OK;
  });
}

void lf_events_close(lf_events_t *events) { delete events; }

int lf_events_next_event(lf_events_t *events, int timeout_ms, lf_event_t *out) {
  if (events == nullptr || out == nullptr) return LF_E_INVALID_ARGUMENT;
  return guarded(nullptr, [&] {
    zmq::pollitem_t item{events->socket.handle(), 0, ZMQ_POLLIN, 0};
    for (;;) {
      if (zmq::poll(&item, 1, std::chrono::milliseconds(timeout_ms)) == 0) return LF_E_TIMEOUT;
      std::vector<zmq::message_t> frames;
      if (!zmq::recv_multipart(events->socket, std::back_inserter(frames), zmq::recv_flags::dontwait))
        continue;
      // Anything that is not a well-formed event (from a newer or broken sender) is skipped.
      if (frames.size() != 2) continue;
      auto decoded = ipc::decode(frames[1].data(), frames[1].size());
      if (!decoded) continue;
      auto view = ipc::MapView::of(decoded->get(), "event");
      if (!view) continue;
      auto name = view->str("adapter");
      auto version = view->uint("version");
      if (!name || !version || name->size() > LF_MAX_ADAPTER_NAME) continue;
      lf_event_t e{};
      std::memcpy(e.adapter, name->data(), name->size());
      e.version = version.value();
      e.previous = view->uint_or("previous", 0).value_or(0);
      e.unix_ns = view->uint_or("unix_ns", 0).value_or(0);
      e.seq = view->uint_or("seq", 0).value_or(0);
      const std::string_view kind = view->str("kind").value_or(std::string_view());
      e.kind = kind == "commit" ? LF_EVENT_COMMIT
               : kind == "rollback" ? LF_EVENT_ROLLBACK
               : kind == "drop" ? LF_EVENT_DROP
                                : 0;
      // A gap in this adapter's numbers is what the socket dropped; a smaller number means the
      // adapter was re-created (numbering starts again), not that anything was lost.
      uint64_t &last = events->last_seq[std::string(name.value())];
      if (e.seq != 0 && last != 0 && e.seq > last + 1) e.missed = e.seq - last - 1;
      if (e.seq != 0) last = e.seq;
      *out = e;
      return LF_OK;
    }
  });
}

}  // extern "C"
