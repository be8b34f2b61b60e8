#include "core/cpu_info.h"

#include <ATen/Version.h>

#include <cstdint>
#include <cstring>
#include <sstream>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#define PEFT_NODE_X86 1
#endif

namespace peft_node {

namespace {

std::string collapse_spaces(const std::string& s) {
  std::istringstream in(s);
  std::string word, out;
  while (in >> word) out += (out.empty() ? "" : " ") + word;
  return out;
}

#ifdef PEFT_NODE_X86
struct Regs {
  unsigned a = 0, b = 0, c = 0, d = 0;
};

Regs cpuid(unsigned leaf, unsigned sub = 0) {
  Regs r;
  __cpuid_count(leaf, sub, r.a, r.b, r.c, r.d);
  return r;
}

// XCR0: which register states the OS saves; an extension is usable only when its state is enabled (as the kernel's
// /proc/cpuinfo flags are).
uint64_t xgetbv0() {
  unsigned lo = 0, hi = 0;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (static_cast<uint64_t>(hi) << 32) | lo;
}
#endif

}  // namespace

CpuInfo cpu_info() {
  CpuInfo info;
  info.capability = at::get_cpu_capability();
#ifdef PEFT_NODE_X86
  const Regs l0 = cpuid(0);
  char vendor[13] = {};
  std::memcpy(vendor, &l0.b, 4);
  std::memcpy(vendor + 4, &l0.d, 4);
  std::memcpy(vendor + 8, &l0.c, 4);
  info.vendor = vendor;
  const unsigned max_leaf = l0.a;

  const Regs l1 = cpuid(1);
  const unsigned base_family = (l1.a >> 8) & 0xf, base_model = (l1.a >> 4) & 0xf;
  const unsigned ext_family = (l1.a >> 20) & 0xff, ext_model = (l1.a >> 16) & 0xf;
  info.family = static_cast<int>(base_family == 0xf ? base_family + ext_family : base_family);
  info.model = static_cast<int>(base_family == 0x6 || base_family == 0xf ? (ext_model << 4) | base_model : base_model);

  const Regs ext = cpuid(0x80000000);
  if (ext.a >= 0x80000004) {
    char brand[49] = {};
    for (unsigned i = 0; i < 3; ++i) {
      const Regs r = cpuid(0x80000002 + i);
      std::memcpy(brand + 16 * i, &r.a, 4);
      std::memcpy(brand + 16 * i + 4, &r.b, 4);
      std::memcpy(brand + 16 * i + 8, &r.c, 4);
      std::memcpy(brand + 16 * i + 12, &r.d, 4);
    }
    info.model_name = collapse_spaces(brand);
  }

  const bool osxsave = (l1.c >> 27) & 1;
  const uint64_t xcr0 = osxsave ? xgetbv0() : 0;
  const bool avx_state = (xcr0 & 0x6) == 0x6;                 // XMM + YMM
  const bool avx512_state = avx_state && (xcr0 & 0xe0) == 0xe0;  // opmask + ZMM
  const bool amx_state = (xcr0 & 0x60000) == 0x60000;         // TILECFG + TILEDATA
  const Regs l7 = max_leaf >= 7 ? cpuid(7, 0) : Regs{};
  const Regs l7s1 = max_leaf >= 7 && l7.a >= 1 ? cpuid(7, 1) : Regs{};
  auto add = [&](bool has, const char* name) {
    if (has) info.isa.emplace_back(name);
  };
  add(avx_state && ((l7.b >> 5) & 1), "avx2");
  add(avx_state && ((l1.c >> 12) & 1), "fma");
  add(avx512_state && ((l7.b >> 16) & 1), "avx512f");
  add(avx512_state && ((l7s1.a >> 5) & 1), "avx512_bf16");
  add(avx512_state && ((l7.d >> 23) & 1), "avx512_fp16");
  add(amx_state && ((l7.d >> 22) & 1), "amx_bf16");
  add(amx_state && ((l7.d >> 24) & 1), "amx_tile");
#endif
  return info;
}

}  // namespace peft_node
