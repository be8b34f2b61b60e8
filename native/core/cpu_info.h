// The CPU libtorch's kernels are chosen for: vendor, family / model, ISA extensions (cpuid) and ATen's CPU capability.
// PyTorch's float32 results are bit-reproducible only where these match (MKL, oneDNN and ATen dispatch on them), so
// golden fixtures record the same fields (scripts/fixture_cpu.py) and the tests compare them.
#pragma once
#include <string>
#include <vector>

namespace peft_node {

struct CpuInfo {
  std::string vendor;      // cpuid leaf 0: "GenuineIntel", "AuthenticAMD", ...
  int family = 0;          // display family and model, as /proc/cpuinfo's "cpu family" and "model"
  int model = 0;
  std::string model_name;  // the brand string, whitespace collapsed
  std::vector<std::string> isa;  // of avx2 fma avx512f avx512_bf16 avx512_fp16 amx_bf16 amx_tile, those usable
  std::string capability;        // at::get_cpu_capability(): "AVX512", "AVX2", "DEFAULT" (ATEN_CPU_CAPABILITY caps it)
};

CpuInfo cpu_info();

}  // namespace peft_node
