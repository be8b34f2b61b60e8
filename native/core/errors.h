// Errors raised by native/core. Each carries a stable code (ERR_*) that the binding copies onto the JS Error,
// so callers can branch on `err.code` instead of parsing messages.
#pragma once
#include <cstdio>
#include <stdexcept>
#include <string>

#include "core/error_codes.h"  // codes::k*, generated from lib/errors.ts

namespace peft_node {

class Error : public std::runtime_error {
 public:
  Error(std::string code, const std::string& message) : std::runtime_error(message), code_(std::move(code)) {}
  const std::string& code() const { return code_; }

 private:
  std::string code_;
};

// Text from a file (names, keys), escaped and cut for an error message, so hostile bytes cannot garble it.
inline std::string printable(const std::string& s) {
  std::string out;
  for (unsigned char c : s.substr(0, 200)) {
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      out += static_cast<char>(c);
    } else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    }
  }
  return s.size() > 200 ? out + "..." : out;
}

[[noreturn]] inline void fail(const std::string& code, const std::string& message) { throw Error(code, message); }

}  // namespace peft_node
