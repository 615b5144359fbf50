// daemon/handlers: every operation through RequestHandler::handle. The handler's refusals are
// tested in test_handlers_bad_requests.cpp and test_handlers_messages.cpp, its leases and
// their identity in test_handlers_leases.cpp.
#include <doctest/doctest.h>

#include <cstring>
#include <string>
#include <unistd.h>
#include <vector>

#include "kernels/validate.hpp"

#include "handlers_fixture.hpp"

using namespace handlers_fixture;

TEST_CASE("every operation works through the request handler") {
  Fixture f;
  SUBCASE("hello with the right protocol describes the daemon") {
    Reply r = f.must(hello(LF_PROTOCOL_VERSION));
    CHECK(r.id == 1);
    CHECK(r.result->uint("protocol").value() == LF_PROTOCOL_VERSION);
    CHECK(r.result->str("control_segment").value() == ipc::control_segment_name(f.instance.name));
    CHECK(r.result->str("data_segment").value() == ipc::data_segment_name(f.instance.name));
    CHECK(r.result->uint("data_bytes").value() == f.arena().data_bytes());
    CHECK(r.result->uint("max_adapters").value() == 4);
    CHECK(r.result->str("version").value() == "0.1.0-test");
  }
  SUBCASE("hello with another protocol is refused") {
    Reply r = f.call(hello(LF_PROTOCOL_VERSION + 1));
    CHECK_FALSE(r.ok);
    CHECK(r.code == LF_E_PROTOCOL_VERSION);
    CHECK(r.message.find(std::to_string(LF_PROTOCOL_VERSION + 1)) != std::string::npos);
  }
  SUBCASE("the adapter life cycle") {
    Reply created = f.must(encode_create({.name = "alpha"}));
    CHECK(created.id == 7);
    CHECK(created.result->str("name").value() == "alpha");
    CHECK(created.result->uint("slot_bytes").value() == 256 * 1024);
    CHECK(created.result->uint("slots").value() == 4);
    CHECK(created.result->uint("history").value() == 2);

    Reply listed = f.must(op("list"));
    auto adapters = listed.result->array("adapters").value();
    REQUIRE(adapters.size() == 1);
    auto first = MapView::of(*adapters[0], "adapter").value();
    CHECK(first.str("name").value() == "alpha");
    CHECK(first.uint("version").value() == 0);
    CHECK(first.uint("tensors").value() == 2);

    Reply info = f.must(named("info", "alpha"));
    CHECK(info.result->uint("version").value() == 0);
    CHECK(info.result->str("metadata").value() == "{\"step\": 0}");
    auto lora = info.result->map("lora").value();
    CHECK(lora.uint("rank").value() == 16);
    CHECK(lora.number("alpha").value() == 32.0);
    auto targets = lora.array("target_modules").value();
    REQUIRE(targets.size() == 2);
    CHECK(ipc::as_str(*targets[1], "t").value() == "v_proj");
    auto tensors = info.result->array("tensors").value();
    REQUIRE(tensors.size() == 2);
    auto t0 = MapView::of(*tensors[0], "t").value();
    CHECK(t0.str("name").value() == kA);
    CHECK(t0.str("dtype").value() == "f16");
    CHECK(t0.uint("nbytes").value() == 16 * 4096 * 2);
    CHECK(MapView::of(*tensors[1], "t").value().uint("offset").value() == 16 * 4096 * 2);
    CHECK(info.result->array("slots").value().size() == 4);

    // begin_write, write, commit with both checks.
    Reply lease = f.must(begin_write("alpha"));
    const uint64_t lease_id = lease.result->uint("lease").value();
    const uint64_t offset = lease.result->uint("data_offset").value();
    const uint64_t bytes = lease.result->uint("slot_bytes").value();
    CHECK(bytes == 256 * 1024);
    std::memset(f.arena().data_at(offset), 0x11, bytes);
    const uint64_t sum = kernels::checksum(f.arena().data_at(offset), bytes);
    Reply committed = f.must(commit(lease_id, LF_COMMIT_CHECK_FINITE | LF_COMMIT_CHECKSUM, sum));
    CHECK(committed.result->uint("version").value() == 1);
    CHECK(committed.result->uint("previous").value() == 0);
    CHECK(committed.result->uint("checksum").value() == sum);
    REQUIRE(f.events.size() == 1);
    CHECK(f.events[0].adapter == "alpha");
    CHECK(f.events[0].kind == "commit");
    CHECK(f.events[0].version == 1);

    // begin_write then abort: the slot comes back.
    Reply other = f.must(begin_write("alpha"));
    f.must(abort_op(other.result->uint("lease").value()));
    Reply after_abort = f.must(named("info", "alpha"));  // owns what the views point into
    auto census = after_abort.result->map("census").value();
    CHECK(census.uint("writing").value() == 0);
    CHECK(census.uint("committed").value() == 1);

    CHECK(f.write_and_commit("alpha") == 2);
    CHECK(f.write_and_commit("alpha") == 3);
    Reply back = f.must(rollback("alpha", 1));
    CHECK(back.result->uint("version").value() == 1);
    CHECK(back.result->uint("previous").value() == 3);
    CHECK(f.events.back().kind == "rollback");
    CHECK(f.must(named("info", "alpha")).result->uint("version").value() == 1);
    CHECK(f.must(named("info", "alpha")).result->uint("last_version").value() == 3);

    Reply stats = f.must(op("stats"));
    CHECK(stats.result->uint("adapters").value() == 1);
    CHECK(stats.result->uint("data_used").value() == 4 * 256 * 1024);
    CHECK(stats.result->uint("flips").value() == 4);
    CHECK(stats.result->uint("errors").value() == 0);

    Reply dropped = f.must(named("drop_adapter", "alpha"));
    CHECK(dropped.result->uint("previous").value() == 1);
    CHECK(f.events.back().kind == "drop");
    CHECK(f.must(op("list")).result->array("adapters").value().empty());
    Reply gone = f.call(named("info", "alpha"));
    CHECK_FALSE(gone.ok);
    CHECK(gone.code == LF_E_NOT_FOUND);
  }
  SUBCASE("a request without args or id gets id 0 and works") {
    Encoder e;
    e.map(1).key("op").str("list");
    Reply r = f.must(e.take());
    CHECK(r.id == 0);
  }
  SUBCASE("integer dtype codes and dtype aliases are accepted") {
    Encoder e;
    e.map(2).key("name").str("codes").key("tensors").array(2);
    e.map(3).key("name").str("a").key("dtype").i64(LF_DTYPE_BF16).key("shape").array(1).i64(8);
    e.map(3).key("name").str("b").key("dtype").str("float32").key("shape").array(0);
    f.must(ipc::encode_request("create_adapter", 1, e.take()));
    Reply info = f.must(named("info", "codes"));
    auto tensors = info.result->array("tensors").value();
    CHECK(MapView::of(*tensors[0], "t").value().str("dtype").value() == "bf16");
    CHECK(MapView::of(*tensors[1], "t").value().str("dtype").value() == "f32");
  }
}

TEST_CASE("open_reader claims a reader entry for the sender as the kernel names it") {
  Fixture f;
  Reply r = f.must(ipc::msg::encode_request(1, ipc::msg::OpenReader{}));
  const uint64_t entry = r.result->uint("entry").value();
  CHECK(r.result->uint("owner").value() == static_cast<uint64_t>(::getpid()));
  const ipc::ReaderEntry &e = f.arena().reader(static_cast<uint32_t>(entry));
  CHECK(e.owner_pid.load() == static_cast<uint64_t>(::getpid()));
  CHECK(e.owner_start.load() == ipc::process_start_time(::getpid()));
  // Another process gets another entry.
  f.peer = kInit;
  Reply other = f.must(ipc::msg::encode_request(2, ipc::msg::OpenReader{}));
  CHECK(other.result->uint("entry").value() != entry);
  CHECK(other.result->uint("owner").value() == 1);
}

TEST_CASE("create_adapter on a full adapter table is refused with LF_E_TABLE_FULL") {
  Fixture f(/*max_adapters=*/2);
  f.must(encode_create({.name = "a1"}));
  f.must(encode_create({.name = "a2"}));
  const std::vector<std::byte> snapshot = f.control();
  Reply r = f.call(encode_create({.name = "a3"}));
  CHECK_FALSE(r.ok);
  CHECK(r.code == LF_E_TABLE_FULL);
  CHECK(f.control_equals(snapshot));
}
