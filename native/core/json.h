// A small, strict JSON reader for config.json, safetensors headers and index files.
// libtorch ships no JSON library; this one keeps integers exact (int64) and rejects anything malformed
// with an ERR_JSON error carrying the byte offset.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace peft_node::json {

class Value {
 public:
  enum class Kind { Null, Bool, Number, String, Array, Object };

  Kind kind() const { return kind_; }
  bool is_null() const { return kind_ == Kind::Null; }
  bool is_bool() const { return kind_ == Kind::Bool; }
  bool is_number() const { return kind_ == Kind::Number; }
  bool is_integer() const { return kind_ == Kind::Number && is_int_; }
  bool is_string() const { return kind_ == Kind::String; }
  bool is_array() const { return kind_ == Kind::Array; }
  bool is_object() const { return kind_ == Kind::Object; }

  bool as_bool() const;
  double as_double() const;
  int64_t as_int() const;  // only for integers that fit int64
  const std::string& as_string() const;
  const std::vector<Value>& as_array() const;
  const std::vector<std::pair<std::string, Value>>& as_object() const;  // keys in file order

  // Object lookup; nullptr when absent or when this is not an object.
  const Value* find(std::string_view key) const;

  static Value make_null() { return Value(); }
  static Value make_bool(bool b);
  static Value make_number(double d, bool is_int, int64_t i);
  static Value make_string(std::string s);
  static Value make_array(std::vector<Value> a);
  static Value make_object(std::vector<std::pair<std::string, Value>> o);

 private:
  Kind kind_ = Kind::Null;
  bool bool_ = false;
  bool is_int_ = false;
  double number_ = 0;
  int64_t int_ = 0;
  std::string string_;
  std::shared_ptr<std::vector<Value>> array_;
  std::shared_ptr<std::vector<std::pair<std::string, Value>>> object_;
};

// Parses a whole document; `what` names the source in error messages (a path, "safetensors header", ...).
Value parse(std::string_view text, const std::string& what);

const char* kind_name(Value::Kind k);

}  // namespace peft_node::json
