// ipc/arena: creation, re-attachment, the header check, permissions and half-made arenas.
#include <doctest/doctest.h>

#include <cstring>
#include <optional>
#include <string>
#include <sys/stat.h>

#include "ipc/arena.hpp"
#include "support.hpp"

using namespace loraflip;
using ipc::Arena;

namespace {

Arena create_arena(const ipc::ArenaConfig &config) {
  bool created = false;
  Result<Arena> a = Arena::open_or_create(config, &created);
  REQUIRE_MESSAGE(a.ok(), test::why(a));
  REQUIRE(created);
  return std::move(a).value();
}

// Opens the instance again, from the daemon side and from the client side; both must refuse
// with LF_E_LAYOUT_MISMATCH and a message holding `words`. Returns the daemon side's message.
std::string expect_refused(const ipc::ArenaConfig &config, const std::string &words) {
  bool created = true;
  Result<Arena> again = Arena::open_or_create(config, &created);
  REQUIRE_FALSE(again.ok());
  CHECK(again.error().code == LF_E_LAYOUT_MISMATCH);
  CHECK_MESSAGE(again.error().message.find(words) != std::string::npos, again.error().message);
  Result<Arena> client =
      Arena::attach(ipc::control_segment_name(config.instance), ipc::Segment::Access::kReadOnly);
  REQUIRE_FALSE(client.ok());
  CHECK(client.error().code == LF_E_LAYOUT_MISMATCH);
  CHECK_MESSAGE(client.error().message.find(words) != std::string::npos, client.error().message);
  return again.error().message;
}

mode_t shm_mode(const std::string &name) {
  struct stat st {};
  REQUIRE(::stat(("/dev/shm/" + name).c_str(), &st) == 0);
  return st.st_mode & 07777;
}

}  // namespace

TEST_CASE("open_or_create creates an arena, then re-attaches to it and sees the same state") {
  test::ScopedInstance inst;
  const ipc::ArenaConfig config = test::small_config(inst.name);
  Arena first = create_arena(config);
  CHECK(first.header().ready.load() == 1);
  CHECK(first.max_adapters() == config.max_adapters);
  CHECK(first.max_readers() == config.max_readers);
  CHECK(first.data_bytes() == config.data_bytes);
  CHECK(ipc::check_header(first.control().base(), first.control().size()).ok());
  std::strcpy(first.adapter(3).name, "marker");
  first.reader(5).pins[2].store(0x1234);
  std::memset(first.data_at(4096), 0x5a, 100);

  bool created = true;
  ipc::ArenaConfig other = config;
  other.max_adapters = 2;  // the existing arena wins over a new configuration
  Result<Arena> second = Arena::open_or_create(other, &created);
  REQUIRE_MESSAGE(second.ok(), test::why(second));
  CHECK_FALSE(created);
  CHECK(second->max_adapters() == config.max_adapters);
  CHECK(second->header().created_unix_ns == first.header().created_unix_ns);
  CHECK(std::string(second->adapter(3).name) == "marker");
  CHECK(second->reader(5).pins[2].load() == 0x1234);
  CHECK(static_cast<int>(*second->data_at(4096 + 99)) == 0x5a);
  // Two mappings of one segment: a store through one is seen through the other.
  second->header().flip_seq.store(41);
  CHECK(first.header().flip_seq.load() == 41);

  Result<Arena> client =
      Arena::attach(ipc::control_segment_name(inst.name), ipc::Segment::Access::kReadOnly);
  REQUIRE_MESSAGE(client.ok(), test::why(client));
  CHECK(std::string(client->adapter(3).name) == "marker");
  CHECK(static_cast<int>(*client->data_at(4096)) == 0x5a);
}

TEST_CASE("arena refuses a segment with a bad magic number and leaves it as it is") {
  test::ScopedInstance inst;
  const ipc::ArenaConfig config = test::small_config(inst.name);
  Arena arena = create_arena(config);
  arena.header().magic ^= 1;
  expect_refused(config, "magic");
  CHECK(arena.header().magic == (ipc::kArenaMagic ^ 1));  // refused, never overwritten
}

TEST_CASE("arena refuses a segment of another format version") {
  test::ScopedInstance inst;
  const ipc::ArenaConfig config = test::small_config(inst.name);
  Arena arena = create_arena(config);
  arena.header().format_version = ipc::kFormatVersion + 1;
  expect_refused(config, "format " + std::to_string(ipc::kFormatVersion + 1));
}

TEST_CASE("arena refuses a segment made by a build with another layout hash") {
  test::ScopedInstance inst;
  const ipc::ArenaConfig config = test::small_config(inst.name);
  Arena arena = create_arena(config);
  arena.header().layout_hash = ipc::layout_hash() + 1;
  expect_refused(config, "layout");
}

TEST_CASE("arena refuses a header whose regions lie outside the segment") {
  test::ScopedInstance inst;
  const ipc::ArenaConfig config = test::small_config(inst.name);
  Arena arena = create_arena(config);
  SUBCASE("reader table past the end") { arena.header().max_readers = 1u << 30; }
  SUBCASE("pool past the end") { arena.header().pool_bytes += 1; }
  SUBCASE("another segment size") { arena.header().control_bytes += 4096; }
  SUBCASE("too many adapters") { arena.header().max_adapters = ipc::kMaxAdapters + 1; }
  expect_refused(config, "outside");
}

TEST_CASE("arena refuses a data segment whose size differs from the header") {
  test::ScopedInstance inst;
  const ipc::ArenaConfig config = test::small_config(inst.name);
  Arena arena = create_arena(config);
  const uint64_t actual = arena.header().data_bytes;
  arena.header().data_bytes += 4096;
  // Both sides name the data segment; the daemon's side gives both sizes, so that an operator
  // sees which is off.
  const std::string why = expect_refused(config, "data segment");
  CHECK_MESSAGE(why.find(std::to_string(actual) + " bytes") != std::string::npos, why);
  CHECK_MESSAGE(why.find("says " + std::to_string(actual + 4096)) != std::string::npos, why);
}

TEST_CASE("check_header refuses a segment smaller than a header") {
  alignas(64) std::byte small[sizeof(ipc::ArenaHeader)] = {};
  CHECK(ipc::check_header(small, sizeof small - 1).code() == LF_E_LAYOUT_MISMATCH);
  CHECK(ipc::check_header(small, sizeof small).code() == LF_E_LAYOUT_MISMATCH);  // zero magic
}

TEST_CASE("attaching to an instance that does not exist gives LF_E_NOT_FOUND") {
  test::ScopedInstance inst;
  Result<Arena> a =
      Arena::attach(ipc::control_segment_name(inst.name), ipc::Segment::Access::kReadOnly);
  REQUIRE_FALSE(a.ok());
  CHECK(a.error().code == LF_E_NOT_FOUND);
  CHECK(a.error().message.find(inst.name) != std::string::npos);
}

TEST_CASE("arena segments get exactly the configured mode, whatever the umask") {
  test::ScopedInstance inst;
  const mode_t old = ::umask(077);
  ipc::ArenaConfig config = test::small_config(inst.name);
  std::optional<Arena> arena;
  {
    bool created = false;
    Result<Arena> a = Arena::open_or_create(config, &created);
    ::umask(old);
    REQUIRE_MESSAGE(a.ok(), test::why(a));
    arena.emplace(std::move(a).value());
  }
  CHECK(shm_mode(ipc::control_segment_name(inst.name)) == 0660);
  CHECK(shm_mode(ipc::data_segment_name(inst.name)) == 0660);
  arena.reset();
  Arena::remove(inst.name);

  config.mode = 0600;
  Arena private_arena = create_arena(config);
  CHECK(shm_mode(ipc::control_segment_name(inst.name)) == 0600);
  CHECK(shm_mode(ipc::data_segment_name(inst.name)) == 0600);
}

TEST_CASE("a half-made arena (ready == 0) is made again") {
  test::ScopedInstance inst;
  const ipc::ArenaConfig config = test::small_config(inst.name);
  {
    Arena arena = create_arena(config);
    std::strcpy(arena.adapter(0).name, "left over");
    arena.header().ready.store(0);
    // A client never attaches to an arena that is still being made.
    Result<Arena> client =
        Arena::attach(ipc::control_segment_name(inst.name), ipc::Segment::Access::kReadOnly);
    REQUIRE_FALSE(client.ok());
    CHECK(client.error().code != LF_OK);
  }
  bool created = false;
  Result<Arena> again = Arena::open_or_create(config, &created);
  REQUIRE_MESSAGE(again.ok(), test::why(again));
  CHECK(created);
  CHECK(again->header().ready.load() == 1);
  CHECK(std::string(again->adapter(0).name).empty());
}

TEST_CASE("Arena::remove removes both segments") {
  test::ScopedInstance inst;
  { Arena arena = create_arena(test::small_config(inst.name)); }
  CHECK(ipc::Segment::exists(ipc::control_segment_name(inst.name)));
  CHECK(ipc::Segment::exists(ipc::data_segment_name(inst.name)));
  Arena::remove(inst.name);
  CHECK_FALSE(ipc::Segment::exists(ipc::control_segment_name(inst.name)));
  CHECK_FALSE(ipc::Segment::exists(ipc::data_segment_name(inst.name)));
}

TEST_CASE("arena creation refuses impossible configurations") {
  test::ScopedInstance inst;
  ipc::ArenaConfig config = test::small_config(inst.name);
  bool created = false;
  SUBCASE("no adapters") {
    config.max_adapters = 0;
    CHECK(Arena::open_or_create(config, &created).error().code == LF_E_INVALID_ARGUMENT);
  }
  SUBCASE("no readers") {
    config.max_readers = 0;
    CHECK(Arena::open_or_create(config, &created).error().code == LF_E_INVALID_ARGUMENT);
  }
  SUBCASE("less than a page of data") {
    config.data_bytes = 100;
    CHECK(Arena::open_or_create(config, &created).error().code == LF_E_INVALID_ARGUMENT);
  }
  SUBCASE("an instance name too long for the header") {
    config.instance = inst.name + std::string(60, 'x');
    CHECK(Arena::open_or_create(config, &created).error().code == LF_E_TOO_LARGE);
  }
  CHECK_FALSE(ipc::Segment::exists(ipc::control_segment_name(inst.name)));
}
