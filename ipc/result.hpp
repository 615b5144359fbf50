// Errors at boundaries are values: a status code from loraflip.h and a message.
#pragma once

#include <string>
#include <utility>
#include <variant>

#include "loraflip.h"

namespace loraflip {

struct Error {
  int code = LF_E_INTERNAL;  // a negative LF_E_* status
  std::string message;
};

inline Error make_error(int code, std::string message) { return Error{code, std::move(message)}; }

// Either a value or an Error. Small on purpose: check ok(), then value() or error().
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}  // NOLINT: implicit on purpose, like std::expected
  Result(Error error) : v_(std::move(error)) {}  // NOLINT
  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }
  T &value() & { return std::get<0>(v_); }
  const T &value() const & { return std::get<0>(v_); }
  T &&value() && { return std::get<0>(std::move(v_)); }
  const Error &error() const { return std::get<1>(v_); }
  T value_or(T fallback) const { return ok() ? value() : std::move(fallback); }
  T *operator->() { return &value(); }
  const T *operator->() const { return &value(); }

 private:
  std::variant<T, Error> v_;
};

// Result of an operation that returns nothing.
class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(Error error) : error_(std::move(error)), ok_(false) {}  // NOLINT
  bool ok() const { return ok_; }
  explicit operator bool() const { return ok_; }
  const Error &error() const { return error_; }
  int code() const { return ok_ ? LF_OK : error_.code; }

 private:
  Error error_{LF_OK, {}};
  bool ok_ = true;
};

}  // namespace loraflip
