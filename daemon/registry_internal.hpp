// Internal to the registry's sources (registry.cpp, commit.cpp, reclaim.cpp, restart.cpp), which
// together implement the one Registry class: helpers that more than one of them needs. Nothing
// else includes this header.
#pragma once

#include <atomic>

#include "ipc/layout.hpp"

namespace loraflip::daemon::detail {

inline constexpr auto kSeqCst = std::memory_order_seq_cst;

inline ipc::AdapterState state_of(const ipc::AdapterRecord &r) {
  return static_cast<ipc::AdapterState>(r.state.load(kSeqCst));
}

inline ipc::SlotState slot_state(const ipc::SlotRecord &s) {
  return ipc::slot_word_state(s.word.load(kSeqCst));
}

}  // namespace loraflip::daemon::detail

// The names the four registry files use unqualified (this header is theirs alone).
namespace loraflip::daemon {
using ipc::AdapterRecord;
using ipc::AdapterState;
using ipc::SlotRecord;
using ipc::SlotState;
using detail::kSeqCst;
using detail::slot_state;
using detail::state_of;
}  // namespace loraflip::daemon
