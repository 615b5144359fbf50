// loraflipd's event loop: the control socket (ROUTER), the events socket (PUB), signals, the
// reaper timer and the systemd watchdog, all in one thread. Requests are answered one at a time
// by the RequestHandler; nothing in the loop blocks on a client.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <zmq.hpp>

#include "daemon/options.hpp"
#include "ipc/result.hpp"

namespace loraflip::daemon {

class Server {
 public:
  // Makes the runtime directory, takes its lock (one daemon per directory), opens or creates
  // the arena (re-attaching after a restart), binds both sockets. Logs nothing: errors are
  // returned for main to print.
  static Result<std::unique_ptr<Server>> start(const Options &options);
  ~Server();

  // Serves until SIGTERM or SIGINT (or stop()). Returns the process exit code.
  int run();
  // Asks run() to return; safe from any thread and from signal handlers.
  void stop();

  const std::string &runtime_dir() const;
  bool arena_was_created() const;

 private:
  Server();
  // Answers one request (envelope + body). True when it is a commit that must wait for its
  // writer's device copies: then nothing was sent and the caller keeps it to ask again.
  bool serve(const std::vector<zmq::message_t> &frames);
  struct State;
  std::unique_ptr<State> s_;
};

// The group id of `name`, or an error naming it.
Result<int> group_id(const std::string &name);

}  // namespace loraflip::daemon
