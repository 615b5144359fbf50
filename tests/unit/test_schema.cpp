// ipc/schema: name checks, tensor sizes and the slot layout.
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "ipc/schema.hpp"

using namespace loraflip;
using ipc::TensorSpec;

TEST_CASE("adapter names of letters, digits and . _ - : up to 127 bytes are accepted") {
  for (const std::string name : {"a", "0", "llama-3.1_lora:v2", "A.B-C_D:E", "q"})
    CHECK_MESSAGE(ipc::check_adapter_name(name).ok(), name);
  CHECK(ipc::check_adapter_name(std::string(127, 'x')).ok());
}

TEST_CASE("adapter names that are empty, too long or hold other characters are refused") {
  CHECK(ipc::check_adapter_name("").code() == LF_E_INVALID_ARGUMENT);
  CHECK(ipc::check_adapter_name(std::string(128, 'x')).code() == LF_E_TOO_LARGE);
  CHECK(ipc::check_adapter_name(std::string(100000, 'x')).code() == LF_E_TOO_LARGE);
  for (const std::string &name : std::vector<std::string>{"-lead", ".hidden", "_x", ":x", "a/b", "a b", "a\\b", "a\"b", "caf\xc3\xa9", "a\nb",
        "a*", std::string("a\0b", 3)}) {
    const Status s = ipc::check_adapter_name(name);
    CHECK_MESSAGE(s.code() == LF_E_INVALID_ARGUMENT, name);
    CHECK_FALSE(s.error().message.empty());
  }
}

TEST_CASE("PEFT tensor names are accepted as they are") {
  for (const std::string name :
       {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
        "base_model.model.model.layers.31.mlp.down_proj.lora_B.weight",
        "base_model.model.lm_head.lora_embedding_A", "a", "x[0]/y:z{1}<2>"})
    CHECK_MESSAGE(ipc::check_tensor_name(name).ok(), name);
  CHECK(ipc::check_tensor_name(std::string(255, 't')).ok());
}

TEST_CASE("tensor names that are empty, too long, or hold spaces, quotes or control bytes are refused") {
  CHECK(ipc::check_tensor_name("").code() == LF_E_INVALID_ARGUMENT);
  CHECK(ipc::check_tensor_name(std::string(256, 't')).code() == LF_E_TOO_LARGE);
  for (const std::string &name : std::vector<std::string>{"a b", "a\"b", "a'b", "a\\b", "a\tb", "a\x7f", "\xc3\xa9",
                                 std::string("a\0b", 3)})
    CHECK_MESSAGE(ipc::check_tensor_name(name).code() == LF_E_INVALID_ARGUMENT, name);
}

TEST_CASE("tensor_bytes multiplies the dimensions by the element size") {
  CHECK(ipc::tensor_bytes(LF_DTYPE_F16, {16, 4096}).value() == 16 * 4096 * 2);
  CHECK(ipc::tensor_bytes(LF_DTYPE_F32, {}).value() == 4);  // a scalar
  CHECK(ipc::tensor_bytes(LF_DTYPE_BF16, {3, 0, 5}).value() == 0);
  CHECK(ipc::tensor_bytes(LF_DTYPE_F64, {1, 2, 3, 4, 5, 6}).value() == 720 * 8);
  // The largest product that fits: (2^61 - 1) * 8 = 2^64 - 8.
  CHECK(ipc::tensor_bytes(LF_DTYPE_F64, {(int64_t{1} << 61) - 1}).value() == UINT64_MAX - 7);
}

TEST_CASE("tensor_bytes refuses overflow, negative dimensions, too many dimensions and unknown dtypes") {
  CHECK(ipc::tensor_bytes(LF_DTYPE_F16, {int64_t{1} << 40, int64_t{1} << 40}).error().code ==
        LF_E_TOO_LARGE);
  CHECK(ipc::tensor_bytes(LF_DTYPE_F64, {int64_t{1} << 61}).error().code == LF_E_TOO_LARGE);
  CHECK(ipc::tensor_bytes(LF_DTYPE_U8, {INT64_MAX, 3}).error().code == LF_E_TOO_LARGE);
  CHECK(ipc::tensor_bytes(LF_DTYPE_U8, {INT64_MAX, 2}).value() == UINT64_MAX - 1);
  CHECK(ipc::tensor_bytes(LF_DTYPE_U8, {INT64_MAX, INT64_MAX, INT64_MAX}).error().code ==
        LF_E_TOO_LARGE);
  CHECK(ipc::tensor_bytes(LF_DTYPE_F32, {4, -1}).error().code == LF_E_INVALID_ARGUMENT);
  CHECK(ipc::tensor_bytes(LF_DTYPE_F32, {INT64_MIN}).error().code == LF_E_INVALID_ARGUMENT);
  CHECK(ipc::tensor_bytes(LF_DTYPE_F32, {1, 1, 1, 1, 1, 1, 1}).error().code == LF_E_TOO_LARGE);
  CHECK(ipc::tensor_bytes(0, {4}).error().code == LF_E_INVALID_ARGUMENT);
  CHECK(ipc::tensor_bytes(99, {4}).error().code == LF_E_INVALID_ARGUMENT);
  CHECK(ipc::tensor_bytes(-1, {4}).error().code == LF_E_INVALID_ARGUMENT);
}

TEST_CASE("plan_slot places tensors on 256-byte boundaries in order, in a whole number of pages") {
  const std::vector<TensorSpec> t = {
      {"a", LF_DTYPE_F16, {3}},          // 6 bytes
      {"b", LF_DTYPE_F32, {100}},        // 400 bytes
      {"c", LF_DTYPE_I8, {1}},           // 1 byte
      {"d", LF_DTYPE_F32, {16, 1024}},   // 64 KiB
      {"e", LF_DTYPE_BF16, {7, 3}},      // 42 bytes
  };
  auto layout = ipc::plan_slot(t, uint64_t{1} << 30);
  REQUIRE(layout.ok());
  REQUIRE(layout->offsets.size() == t.size());
  CHECK(layout->offsets == std::vector<uint64_t>{0, 256, 768, 1024, 1024 + 65536});
  uint64_t end = 0;
  for (size_t i = 0; i < t.size(); ++i) {
    CHECK(layout->offsets[i] % ipc::kTensorAlign == 0);
    CHECK(layout->offsets[i] >= end);  // no overlap with the previous tensor
    end = layout->offsets[i] + ipc::tensor_bytes(t[i].dtype, t[i].shape).value();
  }
  CHECK(layout->slot_bytes % ipc::kSlotAlign == 0);
  CHECK(layout->slot_bytes >= end);
  CHECK(layout->slot_bytes < end + ipc::kSlotAlign);
}

TEST_CASE("plan_slot refuses duplicates, bad names, bad shapes, empty schemas and oversized slots") {
  CHECK(ipc::plan_slot({}, 1 << 20).error().code == LF_E_INVALID_ARGUMENT);
  CHECK(ipc::plan_slot({{"w", LF_DTYPE_F32, {4}}, {"v", LF_DTYPE_F32, {4}}, {"w", LF_DTYPE_F16, {2}}},
                       1 << 20).error().code == LF_E_INVALID_ARGUMENT);
  CHECK(ipc::plan_slot({{"bad name", LF_DTYPE_F32, {4}}}, 1 << 20).error().code ==
        LF_E_INVALID_ARGUMENT);
  CHECK(ipc::plan_slot({{"w", LF_DTYPE_F32, {-4}}}, 1 << 20).error().code == LF_E_INVALID_ARGUMENT);
  CHECK(ipc::plan_slot({{"w", 42, {4}}}, 1 << 20).error().code == LF_E_INVALID_ARGUMENT);
  auto overflow = ipc::plan_slot({{"w", LF_DTYPE_F16, {int64_t{1} << 40, int64_t{1} << 40}}}, 1 << 20);
  CHECK(overflow.error().code == LF_E_TOO_LARGE);
  CHECK(overflow.error().message.find("'w'") != std::string::npos);
  // Exactly one page fits a one-page limit; one byte more needs two pages.
  CHECK(ipc::plan_slot({{"w", LF_DTYPE_U8, {4096}}}, 4096).value().slot_bytes == 4096);
  CHECK(ipc::plan_slot({{"w", LF_DTYPE_U8, {4097}}}, 8191).error().code == LF_E_TOO_LARGE);
  // Many tensors whose sum, not any one of them, is over the limit.
  std::vector<TensorSpec> many;
  for (int i = 0; i < 100; ++i) many.push_back({"t" + std::to_string(i), LF_DTYPE_U8, {1000}});
  CHECK(ipc::plan_slot(many, 64 * 1024).error().code == LF_E_TOO_LARGE);
  CHECK(ipc::plan_slot(many, 128 * 1024).ok());
  // Sizes near 2^64 must not wrap around the limit check.
  CHECK(ipc::plan_slot({{"a", LF_DTYPE_U8, {1 << 20}}, {"b", LF_DTYPE_F64, {(int64_t{1} << 61) - 1}}},
                       uint64_t{1} << 30).error().code == LF_E_TOO_LARGE);
}
