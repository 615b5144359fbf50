// What the fuzzer and the corpus replay test share: a RequestHandler over a Registry on a
// small private arena and two host stand-in devices (so placements "cuda:0" and "cuda:0,1" are
// served, written, checked and replicated), reset to the same empty state before every input,
// and the checks that must hold for every reply.
//
// An input is one or more control messages separated by kSeparator, handled in order from a
// fresh, empty arena (so a sequence such as create_adapter, begin_write, commit reaches the
// deep states, and every input replays the same way on its own).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace loraflip::fuzz {

// 0xC1 is the one byte msgpack never uses as a type; within strings it can still appear,
// which only makes the fuzzer cut a message in two: another input, as valid as any.
inline constexpr std::string_view kSeparator{"\xc1LF\xc1", 4};

std::vector<std::string_view> split_requests(std::string_view input);

// Before a request: which process sends it (see harness.cpp, take_peer). 0xC1 starts no
// msgpack object, so the tag cannot be mistaken for a message.
inline constexpr std::string_view kPeerTag{"\xc1P", 2};

// Within a request (after any peer tag): a request that holds kFrameTag is the frames it
// separates, as the socket would deliver them after the routing id (so "" kFrameTag body is a
// well-formed request). Without it, a request is the empty delimiter and one body.
inline constexpr std::string_view kFrameTag{"\xc1" "F", 2};

struct Outcome {
  size_t requests = 0;
  size_t errors = 0;
  std::vector<std::string> violations;  // empty when every check held
};

class Harness {
 public:
  // Makes a small arena under a name unique to this process ("fz-<pid>-<n>"), and removes the
  // segments (arena and device blocks) of earlier harnesses whose process died without
  // removing theirs.
  Harness();
  ~Harness();  // removes the arena and the device blocks
  Harness(const Harness &) = delete;
  Harness &operator=(const Harness &) = delete;

  // Resets the arena to empty and the device arenas to new, zeroed blocks, then handles every
  // request of `input`. Checks after each:
  //  - the reply decodes as {id, ok, result | error{code, message}} within the client's limits;
  //  - an error's code is one of the LF_E_* codes;
  //  - an error reply never changes an active word, and leaves the control segment byte for
  //    byte as it was, except after a failed commit (which ends its lease by design: the slot
  //    returns and the adapter counts an abort);
  //  - a commit deferred on device copies changes nothing;
  // and after the last request runs one reclamation pass (for crashes only: it depends on
  // which pids live on this machine).
  Outcome run(std::string_view input);

  const std::string &instance() const;

 private:
  struct State;
  std::unique_ptr<State> s_;
};

}  // namespace loraflip::fuzz
