// Spreading work over cores that one core does at the speed it reads or writes memory (the
// daemon's finite check, the writer's copies, checksums and whole slot images): on a slot of
// tens of MiB a second core moves about as many bytes again.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <thread>
#include <vector>

namespace loraflip::ipc {

// Below this many bytes in all, a thread's start costs more than it saves.
inline constexpr uint64_t kParallelBytes = uint64_t{8} << 20;
inline constexpr uint64_t kBytesPerRun = uint64_t{4} << 20;
inline constexpr unsigned kMaxRuns = 4;

// How many runs `total` bytes over `items` pieces are worth on this machine: 1 below
// kParallelBytes, else at most one per core, kMaxRuns, one per kBytesPerRun and one per item.
inline unsigned runs_for(uint64_t total, size_t items) {
  if (total < kParallelBytes) return 1;
  const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  return static_cast<unsigned>(
      std::max<uint64_t>(1, std::min<uint64_t>({cores, kMaxRuns, total / kBytesPerRun, items})));
}

// Cuts items [0, n) of equal size into `runs` contiguous runs of about equal length, every cut
// at a multiple of `align` items (a cache line's worth: two threads never share one). Returns
// each run's first item, then n: run r is [starts[r], starts[r + 1]). Fewer runs where n is too short to give each some.
inline std::vector<size_t> even_runs(size_t n, unsigned runs, size_t align) {
  std::vector<size_t> starts{0};
  for (unsigned r = 1; r < runs; ++r) {
    const size_t cut = static_cast<size_t>(uint64_t{n} * r / runs) / align * align;
    if (cut > starts.back() && cut < n) starts.push_back(cut);
  }
  starts.push_back(n);
  return starts;
}

// Runs work(run, first, end) on each run of even_runs' `starts`, the first on the calling
// thread and the others on threads of their own; returns once all are done.
template <typename Work>
void for_each_run(const std::vector<size_t> &starts, Work work) {
  std::vector<std::jthread> helpers;
  for (size_t r = 1; r + 1 < starts.size(); ++r)
    helpers.emplace_back([&, r] { work(r, starts[r], starts[r + 1]); });
  work(size_t{0}, starts[0], starts[1]);
}  // the helpers join here

// Runs work(i) for every item of [0, n) on `threads` threads, the calling thread among them,
// each taking the next item in order as it finishes one. Fixed runs (for_each_run) end when the
// slowest run does, so a thread the scheduler holds back (another process busy on its core, as
// a trainer's data loaders often are) holds up the whole call; here the others take its share.
// work(i) returns false to stop: items already taken finish, no new one is taken, so every item
// before the one that stopped has been done. Returns once all threads are done.
template <typename Work>
void for_each_item_shared(size_t n, unsigned threads, Work work) {
  std::atomic<size_t> next{0};
  std::atomic<bool> stopped{false};
  const auto take_items = [&] {
    while (!stopped.load(std::memory_order_relaxed)) {
      const size_t i = next.fetch_add(1, std::memory_order_relaxed);
      if (i >= n) return;
      if (!work(i)) stopped.store(true, std::memory_order_relaxed);
    }
  };
  std::vector<std::jthread> helpers;
  for (unsigned t = 1; t < threads && t < n; ++t) helpers.emplace_back(take_items);
  take_items();
}  // the helpers join here

// Copies `bytes` from `src` to `dst` with copy(dst, src, n) in runs of about equal length, on
// several threads when the copy is large enough for that to pay (runs_for), cut at cache
// lines. For whole slot images, into a slot or out of one.
template <typename Copy>
void copy_in_runs(std::byte *dst, const std::byte *src, uint64_t bytes, Copy copy) {
  constexpr size_t kLine = 64;
  const std::vector<size_t> starts =
      even_runs(static_cast<size_t>(bytes), runs_for(bytes, bytes / kBytesPerRun + 1), kLine);
  for_each_run(starts, [&](size_t, size_t begin, size_t end) {
    copy(dst + begin, src + begin, end - begin);
  });
}

}  // namespace loraflip::ipc
