// Declarations only (see ../../README.md): held by pointer in ProcessGroupGloo.hpp.
#pragma once

namespace gloo::transport {
class Device;
class UnboundBuffer;
}  // namespace gloo::transport
