// A small JSON reader for the replies of lf_client_list, lf_client_info and lf_client_stats.
// The daemon writes whole numbers as uint64/int64 text; they are kept exact (not through a
// double), so that versions and byte counts above 2^53 print as they are.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace loraflip::ctl {

class Json {
 public:
  enum class Type { kNull, kBool, kNumber, kString, kArray, kObject };

  // Parses one complete JSON document (trailing non-space is an error). Nesting deeper than
  // 64 is refused: the daemon's replies nest at most 4 deep. On failure *error says where.
  static std::optional<Json> parse(std::string_view text, std::string *error);

  Type type() const { return type_; }
  bool is_null() const { return type_ == Type::kNull; }
  bool is_number() const { return type_ == Type::kNumber; }
  bool is_string() const { return type_ == Type::kString; }
  bool is_array() const { return type_ == Type::kArray; }
  bool is_object() const { return type_ == Type::kObject; }

  // Object member, or a null value when absent or when this is not an object.
  const Json &operator[](std::string_view key) const;
  // Array items (empty when this is not an array).
  const std::vector<Json> &items() const;
  // Object members in document order (empty when this is not an object).
  const std::vector<std::pair<std::string, Json>> &members() const;

  // The number as written, e.g. "18446744073709551615" or "2.5"; "" when not a number.
  const std::string &number_text() const { return type_ == Type::kNumber ? text_ : empty(); }
  // Conversions with a fallback for a missing or mistyped value.
  uint64_t u64(uint64_t fallback = 0) const;
  int64_t i64(int64_t fallback = 0) const;
  double f64(double fallback = 0) const;
  bool boolean(bool fallback = false) const { return type_ == Type::kBool ? bool_ : fallback; }
  const std::string &str() const { return type_ == Type::kString ? text_ : empty(); }

 private:
  friend class Parser;
  static const std::string &empty();
  Type type_ = Type::kNull;
  bool bool_ = false;
  std::string text_;  // string value, or the number's text
  std::vector<Json> items_;
  std::vector<std::pair<std::string, Json>> members_;
};

}  // namespace loraflip::ctl
