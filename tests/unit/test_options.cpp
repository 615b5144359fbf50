// loraflipd's command line: every option's value is checked, and errors name the option.
#include <doctest/doctest.h>

#include "daemon/options.hpp"

using namespace loraflip;
using namespace loraflip::daemon;

namespace {
Result<Options> parse(std::vector<std::string> args) { return parse_options(args); }
}  // namespace

TEST_CASE("defaults, and values in both --key value and --key=value forms") {
  auto d = parse({});
  REQUIRE(d);
  CHECK(d->devices.empty());
  CHECK(d->allow_users.empty());
  CHECK(d->reap_interval_ms == 100);
  auto o = parse({"--instance", "node-3", "--arena-size=2G", "--devices", "0,2", "--history=4"});
  REQUIRE(o);
  CHECK(o->arena.instance == "node-3");
  CHECK(o->arena.data_bytes == (uint64_t{2} << 30));
  CHECK(o->devices == std::vector<int>{0, 2});
  CHECK(o->arena.default_history == 4);
}

TEST_CASE("access lists take names and ids, comma-separated and repeated") {
  auto o = parse({"--allow-user", "alice,1001", "--allow-user=bob", "--allow-group", "trainers"});
  REQUIRE(o);
  CHECK(o->allow_users == std::vector<std::string>{"alice", "1001", "bob"});
  CHECK(o->allow_groups == std::vector<std::string>{"trainers"});
  auto empty_item = parse({"--allow-group", "a,,b"});
  REQUIRE_FALSE(empty_item);
  CHECK(empty_item.error().message.find("--allow-group") != std::string::npos);
  CHECK_FALSE(parse({"--allow-user"}));  // no value
}

TEST_CASE("bad values are refused with the option's name") {
  for (const auto &args : std::vector<std::vector<std::string>>{
           {"--reap-interval-ms", "251"},
           {"--devices", "0,x"},
           {"--devices", "0,1,2,3,4,5,6,7,8"},
           {"--arena-size", "lots"},
           {"--device-backend", "opencl"},
           {"--log-level", "loud"},
           {"--instance", "has space"},
           {"--no-such-option"}}) {
    auto o = parse(args);
    CAPTURE(args[0]);
    REQUIRE_FALSE(o);
    CHECK(o.error().code == LF_E_INVALID_ARGUMENT);
  }
  CHECK(parse_size("512M").value() == (uint64_t{512} << 20));
  CHECK_FALSE(parse_size("0"));
  CHECK_FALSE(parse_size("99999999999G"));
}
