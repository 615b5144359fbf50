// ipc/split_runs.hpp: the cuts of a slot image into runs, and the shared-queue walk the
// daemon's finite check and the writer's copies use.
#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "ipc/split_runs.hpp"

using loraflip::ipc::even_runs;
using loraflip::ipc::for_each_item_shared;

TEST_CASE("even_runs covers every item once, in order, cut at multiples of the alignment") {
  for (unsigned runs = 1; runs <= 4; ++runs) {
    CAPTURE(runs);
    const auto even = even_runs(1000, runs, 8);
    CHECK(even.front() == 0);
    CHECK(even.back() == 1000);
    CHECK(even.size() - 1 <= runs);
    for (size_t r = 0; r + 1 < even.size(); ++r) CHECK(even[r] < even[r + 1]);
    for (size_t r = 1; r + 1 < even.size(); ++r) CHECK(even[r] % 8 == 0);
  }
}

TEST_CASE("for_each_item_shared does every item exactly once, on every thread count") {
  for (unsigned threads : {1u, 2u, 3u, 8u}) {
    for (size_t n : {size_t{0}, size_t{1}, size_t{2}, size_t{257}}) {
      CAPTURE(threads);
      CAPTURE(n);
      std::vector<std::atomic<int>> done(n);
      for_each_item_shared(n, threads, [&](size_t i) {
        done[i].fetch_add(1);
        return true;
      });
      for (size_t i = 0; i < n; ++i) CHECK(done[i].load() == 1);
    }
  }
}

TEST_CASE("for_each_item_shared stops taking items after a stop, every earlier item done") {
  constexpr size_t kItems = 400, kStopAt = 123;
  for (unsigned threads : {1u, 4u}) {
    CAPTURE(threads);
    std::vector<std::atomic<int>> done(kItems);
    for_each_item_shared(kItems, threads, [&](size_t i) {
      done[i].fetch_add(1);
      return i != kStopAt;
    });
    for (size_t i = 0; i <= kStopAt; ++i) CHECK(done[i].load() == 1);
    size_t after = 0;
    for (size_t i = kStopAt + 1; i < kItems; ++i) after += done[i].load();
    // One thread takes nothing after the stop; several may have taken items meanwhile (they
    // run beside the one that stops), but never one twice.
    if (threads == 1) CHECK(after == 0);
    for (size_t i = kStopAt + 1; i < kItems; ++i) CHECK(done[i].load() <= 1);
  }
}

TEST_CASE("for_each_item_shared: a thread held back does not hold the others up") {
  // The first item taken blocks its thread until every other item is done: with fixed runs
  // this would never end (that thread's run would hold items the others cannot take).
  constexpr size_t kItems = 64;
  std::atomic<size_t> finished{0};
  std::atomic<bool> first_taken{false};
  bool released_by_the_others = false;  // else the wait gave up at its deadline
  std::set<std::thread::id> threads_used;
  std::mutex m;
  for_each_item_shared(kItems, 2, [&](size_t) {
    {
      const std::lock_guard lock(m);
      threads_used.insert(std::this_thread::get_id());
    }
    if (!first_taken.exchange(true)) {
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
      while (finished.load() < kItems - 1 && std::chrono::steady_clock::now() < deadline)
        std::this_thread::yield();
      released_by_the_others = finished.load() == kItems - 1;
    }
    finished.fetch_add(1);
    return true;
  });
  CHECK(released_by_the_others);
  CHECK(finished.load() == kItems);
  CHECK(threads_used.size() == 2);
}
