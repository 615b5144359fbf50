#include "json.hpp"

#include <cerrno>
#include <cstdlib>

namespace loraflip::ctl {

const std::string &Json::empty() {
  static const std::string kEmpty;
  return kEmpty;
}

const Json &Json::operator[](std::string_view key) const {
  static const Json kNull;
  if (type_ != Type::kObject) return kNull;
  for (const auto &[k, v] : members_)
    if (k == key) return v;
  return kNull;
}

const std::vector<Json> &Json::items() const {
  static const std::vector<Json> kNone;
  return type_ == Type::kArray ? items_ : kNone;
}

const std::vector<std::pair<std::string, Json>> &Json::members() const {
  static const std::vector<std::pair<std::string, Json>> kNone;
  return type_ == Type::kObject ? members_ : kNone;
}

uint64_t Json::u64(uint64_t fallback) const {
  if (type_ != Type::kNumber || text_.empty() || text_[0] == '-') return fallback;
  errno = 0;
  char *end = nullptr;
  const unsigned long long v = std::strtoull(text_.c_str(), &end, 10);
  if (errno == 0 && *end == '\0') return v;
  // A fraction or exponent: go through double, clamped to the range.
  const double d = std::strtod(text_.c_str(), nullptr);
  if (!(d >= 0)) return fallback;
  return d >= 18446744073709551615.0 ? UINT64_MAX : static_cast<uint64_t>(d);
}

int64_t Json::i64(int64_t fallback) const {
  if (type_ != Type::kNumber) return fallback;
  errno = 0;
  char *end = nullptr;
  const long long v = std::strtoll(text_.c_str(), &end, 10);
  if (errno == 0 && *end == '\0') return v;
  return fallback;
}

double Json::f64(double fallback) const {
  if (type_ != Type::kNumber) return fallback;
  return std::strtod(text_.c_str(), nullptr);
}

class Parser {
 public:
  explicit Parser(std::string_view s) : s_(s) {}

  std::optional<Json> document(std::string *error) {
    Json v;
    if (value(v, 0)) {
      space();
      if (pos_ == s_.size()) return v;
      fail("trailing characters");
    }
    if (error != nullptr) *error = error_ + " at byte " + std::to_string(pos_);
    return std::nullopt;
  }

 private:
  static constexpr int kMaxDepth = 64;

  bool fail(const char *what) {
    if (error_.empty()) error_ = what;
    return false;
  }
  void space() {
    while (pos_ < s_.size() &&
           (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\n' || s_[pos_] == '\r'))
      ++pos_;
  }
  bool literal(std::string_view word) {
    if (s_.substr(pos_, word.size()) != word) return fail("unknown literal");
    pos_ += word.size();
    return true;
  }

  bool value(Json &out, int depth) {
    if (depth > kMaxDepth) return fail("nesting too deep");
    space();
    if (pos_ >= s_.size()) return fail("unexpected end");
    const char c = s_[pos_];
    switch (c) {
      case 'n': out.type_ = Json::Type::kNull; return literal("null");
      case 't': out.type_ = Json::Type::kBool; out.bool_ = true; return literal("true");
      case 'f': out.type_ = Json::Type::kBool; out.bool_ = false; return literal("false");
      case '"': out.type_ = Json::Type::kString; return string(out.text_);
      case '[': return array(out, depth);
      case '{': return object(out, depth);
      default:
        if (c == '-' || (c >= '0' && c <= '9')) return number(out);
        return fail("unexpected character");
    }
  }

  bool digits() {
    const size_t start = pos_;
    while (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9') ++pos_;
    return pos_ > start;
  }

  bool number(Json &out) {
    const size_t start = pos_;
    if (s_[pos_] == '-') ++pos_;
    if (pos_ < s_.size() && s_[pos_] == '0') {
      ++pos_;
    } else if (!digits()) {
      return fail("bad number");
    }
    if (pos_ < s_.size() && s_[pos_] == '.') {
      ++pos_;
      if (!digits()) return fail("bad number");
    }
    if (pos_ < s_.size() && (s_[pos_] == 'e' || s_[pos_] == 'E')) {
      ++pos_;
      if (pos_ < s_.size() && (s_[pos_] == '+' || s_[pos_] == '-')) ++pos_;
      if (!digits()) return fail("bad number");
    }
    out.type_ = Json::Type::kNumber;
    out.text_ = std::string(s_.substr(start, pos_ - start));
    return true;
  }

  static void utf8(std::string &out, uint32_t cp) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xE0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }

  bool hex4(uint32_t *out) {
    if (pos_ + 4 > s_.size()) return fail("bad \\u escape");
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) {
      const char h = s_[pos_++];
      v <<= 4;
      if (h >= '0' && h <= '9') v |= static_cast<uint32_t>(h - '0');
      else if (h >= 'a' && h <= 'f') v |= static_cast<uint32_t>(h - 'a' + 10);
      else if (h >= 'A' && h <= 'F') v |= static_cast<uint32_t>(h - 'A' + 10);
      else return fail("bad \\u escape");
    }
    *out = v;
    return true;
  }

  bool string(std::string &out) {
    ++pos_;  // the opening quote
    out.clear();
    while (pos_ < s_.size()) {
      const char c = s_[pos_++];
      if (c == '"') return true;
      if (static_cast<unsigned char>(c) < 0x20) return fail("control character in a string");
      if (c != '\\') {
        out += c;  // UTF-8 passes through as bytes
        continue;
      }
      if (pos_ >= s_.size()) break;
      const char e = s_[pos_++];
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          uint32_t cp = 0;
          if (!hex4(&cp)) return false;
          if (cp >= 0xD800 && cp < 0xDC00 && s_.substr(pos_, 2) == "\\u") {
            const size_t save = pos_;
            pos_ += 2;
            uint32_t low = 0;
            if (hex4(&low) && low >= 0xDC00 && low < 0xE000) {
              cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
            } else {
              error_.clear();
              pos_ = save;
            }
          }
          if (cp >= 0xD800 && cp < 0xE000) cp = 0xFFFD;  // a lone surrogate
          utf8(out, cp);
          break;
        }
        default: return fail("bad escape");
      }
    }
    return fail("unterminated string");
  }

  bool array(Json &out, int depth) {
    ++pos_;
    out.type_ = Json::Type::kArray;
    space();
    if (pos_ < s_.size() && s_[pos_] == ']') {
      ++pos_;
      return true;
    }
    for (;;) {
      out.items_.emplace_back();
      if (!value(out.items_.back(), depth + 1)) return false;
      space();
      if (pos_ >= s_.size()) return fail("unterminated array");
      if (s_[pos_] == ',') {
        ++pos_;
        continue;
      }
      if (s_[pos_] == ']') {
        ++pos_;
        return true;
      }
      return fail("expected , or ]");
    }
  }

  bool object(Json &out, int depth) {
    ++pos_;
    out.type_ = Json::Type::kObject;
    space();
    if (pos_ < s_.size() && s_[pos_] == '}') {
      ++pos_;
      return true;
    }
    for (;;) {
      space();
      if (pos_ >= s_.size() || s_[pos_] != '"') return fail("expected a key");
      std::string key;
      if (!string(key)) return false;
      space();
      if (pos_ >= s_.size() || s_[pos_] != ':') return fail("expected :");
      ++pos_;
      out.members_.emplace_back(std::move(key), Json());
      if (!value(out.members_.back().second, depth + 1)) return false;
      space();
      if (pos_ >= s_.size()) return fail("unterminated object");
      if (s_[pos_] == ',') {
        ++pos_;
        continue;
      }
      if (s_[pos_] == '}') {
        ++pos_;
        return true;
      }
      return fail("expected , or }");
    }
  }

  std::string_view s_;
  size_t pos_ = 0;
  std::string error_;
};

std::optional<Json> Json::parse(std::string_view text, std::string *error) {
  return Parser(text).document(error);
}

}  // namespace loraflip::ctl
