#include "core/cpu_features.h"

#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#define LOWBIT_X86 1
#include <cpuid.h>
#endif
#if defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#endif

namespace lowbit {

#if defined(__aarch64__)
// ---- AArch64: HWCAP bits from the kernel (Linux: getauxval). The names are
// the kernel's /proc/cpuinfo names.
const char* feature_name(int i) {
  static const char* const names[kNumFeatures] = {"asimd", "asimddp", "i8mm", "sve", "sve2"};
  return i >= 0 && i < kNumFeatures ? names[i] : "unknown";
}

const char* tier_name(Tier t) {
  switch (t) {
    case Tier::scalar: return "scalar";
    case Tier::neon: return "neon";
    case Tier::neondot: return "neondot";
    case Tier::neoni8mm: return "neoni8mm";
  }
  return "unknown";
}

uint32_t tier_required_features(Tier t) {
  switch (t) {
    case Tier::scalar: return 0;
    case Tier::neon: return kASIMD;
    case Tier::neondot: return kASIMD | kDOTPROD;
    case Tier::neoni8mm: return kASIMD | kDOTPROD | kI8MM;
  }
  return ~0u;
}

static uint32_t detect() {
#if defined(__linux__)
  // Bit positions from the Linux uapi <asm/hwcap.h> (stable ABI), spelled out
  // so that older headers build too.
  const unsigned long hw = getauxval(AT_HWCAP), hw2 = getauxval(AT_HWCAP2);
  const unsigned long kHwcapAsimd = 1ul << 1, kHwcapAsimddp = 1ul << 20, kHwcapSve = 1ul << 22;
  const unsigned long kHwcap2Sve2 = 1ul << 1, kHwcap2I8mm = 1ul << 13;
  uint32_t f = 0;
  if (hw & kHwcapAsimd) f |= kASIMD;
  if (hw & kHwcapAsimddp) f |= kDOTPROD;
  if (hw2 & kHwcap2I8mm) f |= kI8MM;
  if (hw & kHwcapSve) f |= kSVE;
  if (hw2 & kHwcap2Sve2) f |= kSVE2;
  return f;
#else
  return kASIMD;  // ASIMD is mandatory in AArch64; other OSes: no optional features
#endif
}

#else
// ---- x86-64 (and, with no features, every other architecture)
const char* feature_name(int i) {
  static const char* const names[kNumFeatures] = {
      "avx2", "fma", "bmi2", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512vbmi", "avx512vbmi2",
      "avx512vnni", "avx512vpopcntdq", "avx512bitalg", "gfni"};
  return i >= 0 && i < kNumFeatures ? names[i] : "unknown";
}

const char* tier_name(Tier t) {
  switch (t) {
    case Tier::scalar: return "scalar";
    case Tier::avx2: return "avx2";
    case Tier::avx512: return "avx512";
    case Tier::avx512icl: return "avx512icl";
  }
  return "unknown";
}

uint32_t tier_required_features(Tier t) {
  const uint32_t avx2 = kAVX2 | kFMA | kBMI2;
  const uint32_t avx512 = avx2 | kAVX512F | kAVX512BW | kAVX512VL | kAVX512DQ;
  const uint32_t icl = avx512 | kAVX512VBMI | kAVX512VBMI2 | kAVX512VNNI |
                       kAVX512VPOPCNTDQ | kAVX512BITALG | kGFNI;
  switch (t) {
    case Tier::scalar: return 0;
    case Tier::avx2: return avx2;
    case Tier::avx512: return avx512;
    case Tier::avx512icl: return icl;
  }
  return ~0u;
}

#ifdef LOWBIT_X86
static uint64_t read_xcr0() {
  uint32_t lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (uint64_t(hi) << 32) | lo;
}

static uint32_t detect() {
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
  const bool osxsave = (c >> 27) & 1, avx = (c >> 28) & 1, fma = (c >> 12) & 1;
  if (!osxsave || !avx) return 0;
  const uint64_t xcr0 = read_xcr0();
  const bool os_ymm = (xcr0 & 0x6) == 0x6;            // SSE + AVX state
  const bool os_zmm = os_ymm && (xcr0 & 0xE0) == 0xE0;  // opmask, ZMM_Hi256, Hi16_ZMM
  if (__get_cpuid_max(0, nullptr) < 7) return 0;
  __cpuid_count(7, 0, a, b, c, d);
  uint32_t f = 0;
  if (os_ymm) {
    if ((b >> 5) & 1) f |= kAVX2;
    if (fma) f |= kFMA;
    if ((b >> 8) & 1) f |= kBMI2;
  }
  if (os_zmm && ((b >> 16) & 1)) {
    f |= kAVX512F;
    if ((b >> 30) & 1) f |= kAVX512BW;
    if ((b >> 31) & 1) f |= kAVX512VL;
    if ((b >> 17) & 1) f |= kAVX512DQ;
    if ((c >> 1) & 1) f |= kAVX512VBMI;
    if ((c >> 6) & 1) f |= kAVX512VBMI2;
    if ((c >> 11) & 1) f |= kAVX512VNNI;
    if ((c >> 12) & 1) f |= kAVX512BITALG;
    if ((c >> 14) & 1) f |= kAVX512VPOPCNTDQ;
    if ((c >> 8) & 1) f |= kGFNI;
  }
  return f;
}
#else
static uint32_t detect() { return 0; }
#endif
#endif  // __aarch64__

bool avx512_emulated() {
#if defined(LOWBIT_SIMDE_AVX512)
  return true;
#else
  return false;
#endif
}

uint32_t cpu_features() {
  static const uint32_t f = [] {
    uint32_t found = detect();
#if defined(LOWBIT_SIMDE_AVX512)  // the x86 SIMDe test build: AVX-512 tiers emulated on AVX2
    const uint32_t avx2 = tier_required_features(Tier::avx2);
    if (avx512_emulated() && (found & avx2) == avx2) found |= tier_required_features(Tier::avx512icl);
#endif
    return found;
  }();
  return f;
}

Tier best_tier() {
  Tier best = Tier::scalar;
  for (int t = 1; t < kNumTiers; ++t) {
    const uint32_t req = tier_required_features(Tier(t));
    if ((cpu_features() & req) == req) best = Tier(t);
  }
  return best;
}

}  // namespace lowbit
