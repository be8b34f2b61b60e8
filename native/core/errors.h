// Errors raised by native/core. Each carries a stable code (ERR_*) that the binding copies onto the JS Error,
// so callers can branch on `err.code` instead of parsing messages.
#pragma once
#include <cstdio>
#include <stdexcept>
#include <string>

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

// Stable codes (documented in README).
namespace codes {
inline constexpr const char* kFileNotFound = "ERR_FILE_NOT_FOUND";
inline constexpr const char* kIo = "ERR_IO";
inline constexpr const char* kJson = "ERR_JSON";
inline constexpr const char* kConfig = "ERR_CONFIG";
inline constexpr const char* kUnsupportedModel = "ERR_UNSUPPORTED_MODEL";
inline constexpr const char* kSafetensorsHeader = "ERR_SAFETENSORS_HEADER";
inline constexpr const char* kSafetensorsDtype = "ERR_SAFETENSORS_DTYPE";
inline constexpr const char* kSafetensorsOffsets = "ERR_SAFETENSORS_OFFSETS";
inline constexpr const char* kZip = "ERR_ZIP";
inline constexpr const char* kPickle = "ERR_PICKLE";
inline constexpr const char* kUnsafePickle = "ERR_UNSAFE_PICKLE";
inline constexpr const char* kCheckpointFormat = "ERR_CHECKPOINT_FORMAT";
inline constexpr const char* kWeightMissing = "ERR_WEIGHT_MISSING";
inline constexpr const char* kShapeMismatch = "ERR_SHAPE_MISMATCH";
inline constexpr const char* kInvalidInput = "ERR_INVALID_INPUT";
inline constexpr const char* kDevice = "ERR_DEVICE";
inline constexpr const char* kDisposed = "ERR_DISPOSED";
inline constexpr const char* kTorch = "ERR_TORCH";
inline constexpr const char* kDistributed = "ERR_DISTRIBUTED";
}  // namespace codes

}  // namespace peft_node
