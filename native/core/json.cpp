#include "core/json.h"

#include <cerrno>
#include <cmath>
#include <cstdlib>

#include "core/errors.h"

namespace peft_node::json {

namespace {

constexpr int kMaxDepth = 256;  // deeper documents are rejected rather than risking stack exhaustion

class Parser {
 public:
  Parser(std::string_view text, const std::string& what) : s_(text), what_(what) {}

  Value document() {
    skip_ws();
    Value v = value(0);
    skip_ws();
    if (pos_ != s_.size()) error("unexpected trailing characters");
    return v;
  }

 private:
  std::string_view s_;
  const std::string& what_;
  size_t pos_ = 0;

  [[noreturn]] void error(const std::string& msg) {
    fail(codes::kJson, "invalid JSON in " + what_ + " at byte " + std::to_string(pos_) + ": " + msg);
  }

  void skip_ws() {
    while (pos_ < s_.size() && (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\n' || s_[pos_] == '\r')) ++pos_;
  }

  char peek() {
    if (pos_ >= s_.size()) error("unexpected end of input");
    return s_[pos_];
  }

  void expect_literal(std::string_view lit) {
    if (s_.substr(pos_, lit.size()) != lit) error("invalid literal");
    pos_ += lit.size();
  }

  Value value(int depth) {
    if (depth > kMaxDepth) error("nesting deeper than " + std::to_string(kMaxDepth));
    char c = peek();
    switch (c) {
      case '{': return object(depth);
      case '[': return array(depth);
      case '"': return Value::make_string(string());
      case 't': expect_literal("true"); return Value::make_bool(true);
      case 'f': expect_literal("false"); return Value::make_bool(false);
      case 'n': expect_literal("null"); return Value::make_null();
      default:
        if (c == '-' || (c >= '0' && c <= '9')) return number();
        error(std::string("unexpected character '") + c + "'");
    }
  }

  Value object(int depth) {
    ++pos_;  // '{'
    std::vector<std::pair<std::string, Value>> members;
    skip_ws();
    if (peek() == '}') { ++pos_; return Value::make_object(std::move(members)); }
    for (;;) {
      skip_ws();
      if (peek() != '"') error("expected a string key");
      std::string key = string();
      skip_ws();
      if (peek() != ':') error("expected ':'");
      ++pos_;
      skip_ws();
      members.emplace_back(std::move(key), value(depth + 1));
      skip_ws();
      char c = peek();
      ++pos_;
      if (c == '}') break;
      if (c != ',') error("expected ',' or '}'");
    }
    return Value::make_object(std::move(members));
  }

  Value array(int depth) {
    ++pos_;  // '['
    std::vector<Value> items;
    skip_ws();
    if (peek() == ']') { ++pos_; return Value::make_array(std::move(items)); }
    for (;;) {
      skip_ws();
      items.push_back(value(depth + 1));
      skip_ws();
      char c = peek();
      ++pos_;
      if (c == ']') break;
      if (c != ',') error("expected ',' or ']'");
    }
    return Value::make_array(std::move(items));
  }

  static void append_utf8(std::string& out, uint32_t cp) {
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

  uint32_t hex4() {
    if (pos_ + 4 > s_.size()) error("truncated \\u escape");
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) {
      char c = s_[pos_++];
      v <<= 4;
      if (c >= '0' && c <= '9') v |= c - '0';
      else if (c >= 'a' && c <= 'f') v |= c - 'a' + 10;
      else if (c >= 'A' && c <= 'F') v |= c - 'A' + 10;
      else error("bad hex digit in \\u escape");
    }
    return v;
  }

  std::string string() {
    ++pos_;  // opening quote
    std::string out;
    for (;;) {
      if (pos_ >= s_.size()) error("unterminated string");
      unsigned char c = static_cast<unsigned char>(s_[pos_++]);
      if (c == '"') break;
      if (c < 0x20) error("control character in string");
      if (c != '\\') { out += static_cast<char>(c); continue; }
      if (pos_ >= s_.size()) error("unterminated escape");
      char e = s_[pos_++];
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
          uint32_t cp = hex4();
          if (cp >= 0xD800 && cp <= 0xDBFF) {
            if (pos_ + 2 > s_.size() || s_[pos_] != '\\' || s_[pos_ + 1] != 'u') error("lone high surrogate");
            pos_ += 2;
            uint32_t lo = hex4();
            if (lo < 0xDC00 || lo > 0xDFFF) error("bad low surrogate");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
            error("lone low surrogate");
          }
          append_utf8(out, cp);
          break;
        }
        default: error(std::string("bad escape \\") + e);
      }
    }
    return out;
  }

  Value number() {
    size_t start = pos_;
    if (s_[pos_] == '-') ++pos_;
    if (pos_ >= s_.size() || !(s_[pos_] >= '0' && s_[pos_] <= '9')) error("bad number");
    bool is_int = true;
    while (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9') ++pos_;
    if (pos_ < s_.size() && s_[pos_] == '.') {
      is_int = false;
      ++pos_;
      if (pos_ >= s_.size() || !(s_[pos_] >= '0' && s_[pos_] <= '9')) error("bad fraction");
      while (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9') ++pos_;
    }
    if (pos_ < s_.size() && (s_[pos_] == 'e' || s_[pos_] == 'E')) {
      is_int = false;
      ++pos_;
      if (pos_ < s_.size() && (s_[pos_] == '+' || s_[pos_] == '-')) ++pos_;
      if (pos_ >= s_.size() || !(s_[pos_] >= '0' && s_[pos_] <= '9')) error("bad exponent");
      while (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9') ++pos_;
    }
    std::string text(s_.substr(start, pos_ - start));
    double d = std::strtod(text.c_str(), nullptr);
    int64_t i = 0;
    if (is_int) {
      errno = 0;
      long long ll = std::strtoll(text.c_str(), nullptr, 10);
      if (errno == ERANGE) is_int = false;  // too large for int64: keep only the double
      else i = ll;
    }
    return Value::make_number(d, is_int, i);
  }
};

}  // namespace

const char* kind_name(Value::Kind k) {
  switch (k) {
    case Value::Kind::Null: return "null";
    case Value::Kind::Bool: return "boolean";
    case Value::Kind::Number: return "number";
    case Value::Kind::String: return "string";
    case Value::Kind::Array: return "array";
    case Value::Kind::Object: return "object";
  }
  return "?";
}

Value Value::make_bool(bool b) { Value v; v.kind_ = Kind::Bool; v.bool_ = b; return v; }
Value Value::make_number(double d, bool is_int, int64_t i) {
  Value v; v.kind_ = Kind::Number; v.number_ = d; v.is_int_ = is_int; v.int_ = i; return v;
}
Value Value::make_string(std::string s) { Value v; v.kind_ = Kind::String; v.string_ = std::move(s); return v; }
Value Value::make_array(std::vector<Value> a) {
  Value v; v.kind_ = Kind::Array; v.array_ = std::make_shared<std::vector<Value>>(std::move(a)); return v;
}
Value Value::make_object(std::vector<std::pair<std::string, Value>> o) {
  Value v; v.kind_ = Kind::Object;
  v.object_ = std::make_shared<std::vector<std::pair<std::string, Value>>>(std::move(o));
  return v;
}

static void type_error(const char* want, Value::Kind got) {
  fail(codes::kJson, std::string("expected a JSON ") + want + ", found " + kind_name(got));
}

bool Value::as_bool() const { if (kind_ != Kind::Bool) type_error("boolean", kind_); return bool_; }
double Value::as_double() const { if (kind_ != Kind::Number) type_error("number", kind_); return number_; }
int64_t Value::as_int() const {
  if (kind_ != Kind::Number || !is_int_) type_error("integer", kind_);
  return int_;
}
const std::string& Value::as_string() const { if (kind_ != Kind::String) type_error("string", kind_); return string_; }
const std::vector<Value>& Value::as_array() const { if (kind_ != Kind::Array) type_error("array", kind_); return *array_; }
const std::vector<std::pair<std::string, Value>>& Value::as_object() const {
  if (kind_ != Kind::Object) type_error("object", kind_);
  return *object_;
}

// The last of duplicate keys wins, as in Python's json and JavaScript's JSON.parse (which read the same files).
const Value* Value::find(std::string_view key) const {
  if (kind_ != Kind::Object) return nullptr;
  for (auto it = object_->rbegin(); it != object_->rend(); ++it)
    if (it->first == key) return &it->second;
  return nullptr;
}

Value parse(std::string_view text, const std::string& what) { return Parser(text, what).document(); }

}  // namespace peft_node::json
