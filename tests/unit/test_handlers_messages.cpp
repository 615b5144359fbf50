// daemon/handlers, messages: strings that are not UTF-8, requests over a decoding limit,
// unknown and repeated fields, and random or mutated bytes; each refused with an error reply
// under the request's id when it has one, and nothing changed.
#include <doctest/doctest.h>

#include <random>
#include <string>
#include <vector>

#include "ipc/text.hpp"

#include "handlers_fixture.hpp"

using namespace handlers_fixture;

TEST_CASE("strings that are not UTF-8 or hold NUL are refused wherever they appear, never echoed") {
  Fixture f;
  f.must(encode_create({.name = "alpha"}));
  const std::vector<std::byte> snapshot = f.control();
  const std::string cut("caf\xc3", 4), lone("\xff", 1), surrogate("\xed\xa0\x80", 3),
      overlong("\xc0\xaf", 2), nul("a\0b", 3);
  for (const std::string &text : {cut, lone, surrogate, overlong, nul}) {
    CAPTURE(text.size());
    const std::vector<std::string> requests = {
        op(text),
        named("info", text),
        encode_create({.name = text}),
        encode_create({.name = "delta", .tensors = {{text, "f16", {4}}}}),
        encode_create({.name = "delta", .tensors = {{"w", text, {4}}}}),
        encode_create({.name = "delta", .placement = text}),
        encode_create({.name = "delta", .metadata = text}),
        ipc::encode_request("create_adapter", 1, [&] {
          Encoder e;
          e.map(3).key("name").str("delta").key("tensors").array(1).map(3).key("name").str("w")
              .key("dtype").str("f16").key("shape").array(1).i64(4);
          e.key("lora").map(1).key("target_modules").array(2).str("q_proj").str(text);
          return e.take();
        }()),
        ipc::encode_request("create_adapter", 1, [&] {
          Encoder e;
          e.map(3).key("name").str("delta").key("tensors").array(1).map(3).key("name").str("w")
              .key("dtype").str("f16").key("shape").array(1).i64(4);
          e.key("lora").map(1).key("target_modules").str(text);
          return e.take();
        }()),
    };
    for (const std::string &request : requests) {
      Reply r = f.call(request);
      CHECK_FALSE(r.ok);
      CHECK(r.code == LF_E_INVALID_ARGUMENT);
      CHECK(ipc::check_text(r.message).ok());  // the reply never carries the bad bytes
      CHECK(f.control_equals(snapshot));
    }
  }
  // Valid UTF-8 beyond ASCII is kept as it is.
  f.must(encode_create({.name = "delta", .metadata = "caf\xc3\xa9 \xe2\x9c\x93"}));
  CHECK(f.must(named("info", "delta")).result->str("metadata").value() ==
        "caf\xc3\xa9 \xe2\x9c\x93");
}

TEST_CASE("a request over a decoding limit is answered under its own id") {
  Fixture f;
  Encoder e;
  e.map(2).key("name").str("many").key("tensors").array(70000);
  for (int i = 0; i < 70000; ++i) e.u64(0);
  Reply r = f.call(ipc::encode_request("create_adapter", 4242, e.take()));
  CHECK_FALSE(r.ok);
  CHECK(r.code == LF_E_TOO_LARGE);
  CHECK(r.id == 4242);
  // An id in a signed encoding (int 8: D0 2A) is the same id to the scanner and the decoder.
  Reply signed_id = f.call([] {
    Encoder e;
    e.map(3).key("op").str("list").key("id");
    e.pk().pack_fix_int8(42);
    e.key("args");  // then nested past the decoding limit: refused before any decoding
    return e.take() + std::string(100, '\x91') + "\xc0";
  }());
  CHECK(signed_id.code == LF_E_TOO_LARGE);
  CHECK(signed_id.id == 42);
  // Nested deeper than the limit after the id, and after that garbage: the id still comes back.
  std::string deep = ipc::encode_request("list", 77, std::string(100, '\x91') + "\xc0");
  Reply d = f.call(deep);
  CHECK(d.code == LF_E_TOO_LARGE);
  CHECK(d.id == 77);
}

TEST_CASE("unknown fields and fields given twice are refused in every message") {
  Fixture f;
  f.must(encode_create({.name = "alpha"}));
  Reply unknown = f.call(op("list", [](Encoder &e) { e.map(1).key("verbose").boolean(true); }));
  CHECK(unknown.code == LF_E_PROTOCOL);
  CHECK(unknown.message.find("verbose") != std::string::npos);
  Reply envelope = f.call([] {
    Encoder e;
    e.map(3).key("op").str("list").key("id").u64(3).key("trace").boolean(true);
    return e.take();
  }());
  CHECK(envelope.code == LF_E_PROTOCOL);
  CHECK(envelope.id == 3);
  Reply twice = f.call(op("info", [](Encoder &e) {
    e.map(2).key("name").str("alpha").key("name").str("alpha");
  }));
  CHECK(twice.code == LF_E_PROTOCOL);
  CHECK(twice.message.find("twice") != std::string::npos);
}

TEST_CASE("the handler survives random bytes and mutated requests without changing state on errors") {
  Fixture f;
  build_state(f);
  std::vector<std::string> corpus = {
      hello(LF_PROTOCOL_VERSION), op("list"), op("stats"), named("info", "alpha"),
      named("info", "beta"), encode_create({.name = "delta"}),
      encode_create({.name = "eps", .tensors = {{"w", "bf16", {8, 8}}}, .slots = 3, .history = 1}),
      begin_write("alpha"), commit(1, 3, 12345), commit(2), abort_op(3), rollback("alpha", 1),
      named("drop_adapter", "beta"),
  };
  std::mt19937_64 rng(2024);
  auto mutate = [&](std::string s) {
    const int edits = 1 + static_cast<int>(rng() % 4);
    for (int k = 0; k < edits; ++k) {
      switch (rng() % 6) {
        case 0:  // flip a byte
          if (!s.empty()) s[rng() % s.size()] = static_cast<char>(rng());
          break;
        case 1:  // flip a bit
          if (!s.empty()) s[rng() % s.size()] ^= static_cast<char>(1 << (rng() % 8));
          break;
        case 2:  // insert bytes
          s.insert(rng() % (s.size() + 1), std::string(1 + rng() % 4, static_cast<char>(rng())));
          break;
        case 3:  // delete bytes
          if (!s.empty()) s.erase(rng() % s.size(), 1 + rng() % 4);
          break;
        case 4:  // truncate
          s.resize(rng() % (s.size() + 1));
          break;
        case 5: {  // splice in a piece of another request
          const std::string &o = corpus[rng() % corpus.size()];
          const size_t from = rng() % o.size();
          s.insert(rng() % (s.size() + 1), o.substr(from, rng() % 16));
          break;
        }
      }
    }
    return s;
  };
  // A commit that fails after finding its lease ends that lease (the writer is told to stop);
  // that is the one documented change an error reply may make.
  auto ends_a_lease = [](const std::string &request, const Reply &r) {
    if (r.code != LF_E_LEASE && r.code != LF_E_VALIDATION) return false;
    auto oh = ipc::decode(request.data(), request.size());
    if (!oh) return false;
    auto m = MapView::of(oh->get(), "request");
    return m && m->str("op").ok() && m->str("op").value() == "commit";
  };

  std::vector<std::byte> snapshot = f.control();
  int errors = 0, oks = 0;
  auto run = [&](const std::string &request) {
    std::string bytes;
    REQUIRE_NOTHROW(bytes = f.raw(request));
    Reply r = parse_reply(bytes);
    if (!r.decoded) {
      std::string hex;
      for (unsigned char c : request) hex += "0123456789abcdef"[c >> 4], hex += "0123456789abcdef"[c & 15];
      auto d = ipc::decode(bytes.data(), bytes.size());
      FAIL("undecodable reply of " << bytes.size() << " bytes ("
           << (d ? ipc::to_json(d->get()).substr(0, 300) : d.error().message) << ") to " << hex);
    }
    if (r.ok) {
      ++oks;
    } else {
      ++errors;
      REQUIRE(r.code < 0);
      REQUIRE(r.code >= LF_E_DEVICE);
      if (!ends_a_lease(request, r) && !f.control_equals(snapshot)) {
        std::string hex;
        for (unsigned char c : request) hex += "0123456789abcdef"[c >> 4], hex += "0123456789abcdef"[c & 15];
        FAIL("an error reply (" << r.code << ": " << r.message << ") changed the state; request "
                                << hex);
      }
    }
    if (r.ok || ends_a_lease(request, r)) snapshot = f.control();
  };
  for (int i = 0; i < 20000; ++i) {
    std::string s(rng() % 96, '\0');
    for (char &c : s) c = static_cast<char>(rng());
    // Half of them start like a map, to get past the first byte more often.
    if (!s.empty() && (i & 1)) s[0] = static_cast<char>(0x80 | (rng() % 4));
    run(s);
  }
  for (int i = 0; i < 20000; ++i) run(mutate(corpus[rng() % corpus.size()]));
  MESSAGE(oks << " ok replies, " << errors << " error replies");
  CHECK(errors > 30000);
  CHECK(f.must(hello(LF_PROTOCOL_VERSION)).ok);
}
