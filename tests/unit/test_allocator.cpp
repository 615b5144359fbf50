// RangeAllocator: first fit, alignment, coalescing, reserve() and used() accounting;
// RangeReservation: ranges given back unless kept.
#include <doctest/doctest.h>

#include <cstdint>
#include <map>
#include <random>
#include <vector>

#include "daemon/allocator.hpp"

using loraflip::daemon::RangeAllocator;
using loraflip::daemon::RangeReservation;

namespace {
constexpr uint64_t kPage = 4096;
}

TEST_CASE("allocator hands out the lowest range that fits (first fit)") {
  RangeAllocator a(64 * kPage, kPage);
  CHECK(a.allocate(kPage) == 0);
  CHECK(a.allocate(2 * kPage) == kPage);
  CHECK(a.allocate(kPage) == 3 * kPage);
  a.release(0, kPage);
  // A one-page hole at 0 and a big tail: one page goes into the hole, two pages cannot.
  CHECK(a.allocate(2 * kPage) == 4 * kPage);
  CHECK(a.allocate(kPage) == 0);
  a.release(kPage, 2 * kPage);
  CHECK(a.allocate(kPage) == kPage);
  CHECK(a.allocate(kPage) == 2 * kPage);
  CHECK(a.allocate(kPage) == 6 * kPage);
}

TEST_CASE("allocator rounds sizes up to its alignment and offsets stay aligned") {
  RangeAllocator a(16 * 1024, 256);
  CHECK(a.allocate(1) == 0);
  CHECK(a.used() == 256);
  CHECK(a.allocate(300) == 256);
  CHECK(a.used() == 256 + 512);
  CHECK(a.allocate(256) == 768);
  CHECK(a.allocate(257) == 1024);
  CHECK(a.used() == 256 + 512 + 256 + 512);
  // The size itself is rounded down to the alignment.
  RangeAllocator b(10000, kPage);
  CHECK(b.size() == 2 * kPage);
  CHECK(b.allocate(2 * kPage) == 0);
  CHECK_FALSE(b.allocate(1).has_value());
}

TEST_CASE("allocator refuses zero bytes, more than its size, and anything once full") {
  RangeAllocator a(4 * kPage, kPage);
  CHECK_FALSE(a.allocate(0).has_value());
  CHECK_FALSE(a.allocate(4 * kPage + 1).has_value());
  CHECK_FALSE(a.allocate(UINT64_MAX).has_value());
  CHECK(a.allocate(4 * kPage) == 0);
  CHECK_FALSE(a.allocate(1).has_value());
  CHECK(a.largest_free() == 0);
  CHECK(a.used() == 4 * kPage);
}

TEST_CASE("allocator merges a released range with both free neighbours") {
  RangeAllocator a(3 * kPage, kPage);
  const auto x = a.allocate(kPage), y = a.allocate(kPage), z = a.allocate(kPage);
  REQUIRE((x && y && z));
  SUBCASE("outer ranges first, then the middle") {
    a.release(*x, kPage);
    a.release(*z, kPage);
    CHECK(a.largest_free() == kPage);
    a.release(*y, kPage);
  }
  SUBCASE("middle first, then the outer ranges") {
    a.release(*y, kPage);
    a.release(*z, kPage);
    CHECK(a.largest_free() == 2 * kPage);
    a.release(*x, kPage);
  }
  SUBCASE("in address order") {
    a.release(*x, kPage);
    a.release(*y, kPage);
    CHECK(a.largest_free() == 2 * kPage);
    a.release(*z, kPage);
  }
  CHECK(a.used() == 0);
  CHECK(a.largest_free() == 3 * kPage);
  CHECK(a.allocate(3 * kPage) == 0);
}

TEST_CASE("allocator reserve() takes a free range and refuses used, overlapping or outside ones") {
  RangeAllocator a(16 * kPage, kPage);
  CHECK(a.reserve(4 * kPage, 2 * kPage));
  CHECK(a.used() == 2 * kPage);
  // used, overlapping at either end, containing it
  CHECK_FALSE(a.reserve(4 * kPage, 2 * kPage));
  CHECK_FALSE(a.reserve(5 * kPage, kPage));
  CHECK_FALSE(a.reserve(3 * kPage, 2 * kPage));
  CHECK_FALSE(a.reserve(5 * kPage, 2 * kPage));
  CHECK_FALSE(a.reserve(2 * kPage, 8 * kPage));
  // outside the region, wrapping around, unaligned, empty
  CHECK_FALSE(a.reserve(16 * kPage, kPage));
  CHECK_FALSE(a.reserve(15 * kPage, 2 * kPage));
  CHECK_FALSE(a.reserve(UINT64_MAX - kPage + 1, 2 * kPage));
  CHECK_FALSE(a.reserve(kPage, UINT64_MAX - 2 * kPage));
  CHECK_FALSE(a.reserve(100, kPage));
  CHECK_FALSE(a.reserve(kPage, 0));
  CHECK(a.used() == 2 * kPage);  // no refused call changed anything
  // The free ranges on both sides of the reservation are still whole and usable.
  CHECK(a.allocate(4 * kPage) == 0);
  CHECK(a.allocate(10 * kPage) == 6 * kPage);
  CHECK_FALSE(a.allocate(1).has_value());
  a.release(4 * kPage, 2 * kPage);
  CHECK(a.reserve(4 * kPage, 2 * kPage));
  CHECK(a.reserve(0, 0) == false);
}

TEST_CASE("allocator keeps used() equal to the bytes handed out over random traffic") {
  constexpr uint64_t kAlign = 256, kSize = 1 << 20;
  RangeAllocator a(kSize, kAlign);
  std::vector<uint8_t> owner(kSize / kAlign, 0);  // a shadow of which units are taken
  std::map<uint64_t, uint64_t> live;              // offset -> requested bytes
  std::mt19937_64 rng(7);
  uint64_t expected_used = 0;
  for (int step = 0; step < 4000; ++step) {
    if (live.empty() || rng() % 3 != 0) {
      const uint64_t bytes = 1 + rng() % (16 * kAlign);
      const auto off = a.allocate(bytes);
      if (!off) continue;
      REQUIRE(*off % kAlign == 0);
      const uint64_t units = (bytes + kAlign - 1) / kAlign;
      REQUIRE(*off / kAlign + units <= owner.size());
      for (uint64_t u = 0; u < units; ++u) REQUIRE(owner[*off / kAlign + u] == 0);
      for (uint64_t u = 0; u < units; ++u) owner[*off / kAlign + u] = 1;
      live[*off] = bytes;
      expected_used += units * kAlign;
    } else {
      auto it = live.begin();
      std::advance(it, static_cast<long>(rng() % live.size()));
      const uint64_t units = (it->second + kAlign - 1) / kAlign;
      for (uint64_t u = 0; u < units; ++u) owner[it->first / kAlign + u] = 0;
      a.release(it->first, it->second);
      expected_used -= units * kAlign;
      live.erase(it);
    }
    REQUIRE(a.used() == expected_used);
  }
  for (const auto &[off, bytes] : live) a.release(off, bytes);
  CHECK(a.used() == 0);
  CHECK(a.largest_free() == kSize);
}

TEST_CASE("a reservation gives back what it took from each allocator unless it is kept") {
  RangeAllocator a(8 * kPage, kPage), b(8 * kPage, kPage);
  {
    RangeReservation taken;
    CHECK(taken.take(a, kPage) == 0);
    CHECK(taken.take(b, 2 * kPage) == 0);
    CHECK_FALSE(taken.take(b, 8 * kPage).has_value());  // a failed take holds nothing
    CHECK(a.used() == kPage);
    CHECK(b.used() == 2 * kPage);
  }
  CHECK(a.used() == 0);
  CHECK(b.used() == 0);
  {
    RangeReservation taken;
    CHECK(taken.take(a, 3 * kPage) == 0);
    taken.keep();
  }
  CHECK(a.used() == 3 * kPage);
}
