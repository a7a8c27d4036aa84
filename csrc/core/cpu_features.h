// CPU feature detection and the ISA tier chain of the build's architecture:
// x86-64 (cpuid + xgetbv) or AArch64 (getauxval HWCAP/HWCAP2). Each
// architecture has its own chain; rank 0 is always `scalar`, and Tier's
// integer value is the rank (what Python sees as "tier_rank").
#pragma once
#include <cstdint>

namespace lowbit {

// Feature bits. A tier is usable only when every feature it lists is present
// AND the OS has enabled the matching register state (XCR0).
#if defined(__aarch64__)
enum Feature : uint32_t {
  kASIMD = 1u << 0,    // Advanced SIMD (NEON), Armv8.0
  kDOTPROD = 1u << 1,  // sdot/udot (Armv8.2 FEAT_DotProd)
  kI8MM = 1u << 2,     // smmla/ummla/usmmla/usdot/sudot (Armv8.6 FEAT_I8MM)
  kSVE = 1u << 3,      // reported only; no SVE kernels yet
  kSVE2 = 1u << 4,     // reported only
};
constexpr int kNumFeatures = 5;

// neon: Armv8.0 ASIMD (tbl, cnt, smull/sadalp); neondot: + dotprod;
// neoni8mm: + i8mm (usdot/sudot, smmla).
enum class Tier : int { scalar = 0, neon = 1, neondot = 2, neoni8mm = 3 };
constexpr int kNumTiers = 4;
#else
enum Feature : uint32_t {
  kAVX2 = 1u << 0,       // includes OS-enabled YMM state
  kFMA = 1u << 1,
  kBMI2 = 1u << 2,
  kAVX512F = 1u << 3,    // includes OS-enabled ZMM + opmask state
  kAVX512BW = 1u << 4,
  kAVX512VL = 1u << 5,
  kAVX512DQ = 1u << 6,
  kAVX512VBMI = 1u << 7,
  kAVX512VBMI2 = 1u << 8,
  kAVX512VNNI = 1u << 9,
  kAVX512VPOPCNTDQ = 1u << 10,
  kAVX512BITALG = 1u << 11,
  kGFNI = 1u << 12,
};
constexpr int kNumFeatures = 13;

// Tiers form a chain; each includes everything below it.
enum class Tier : int { scalar = 0, avx2 = 1, avx512 = 2, avx512icl = 3 };
constexpr int kNumTiers = 4;
#endif

// Name of feature bit i (0 <= i < kNumFeatures), e.g. "avx2", "asimddp".
const char* feature_name(int i);

const char* tier_name(Tier t);
uint32_t tier_required_features(Tier t);

// Detected once (thread-safe static init). Zero on other architectures. In
// the SIMDe test build (LOWBIT_SIMDE_AVX512) every AVX-512 feature is
// reported present whenever AVX2 is, because those kernels are then compiled
// for AVX2.
uint32_t cpu_features();
// True only in the SIMDe test build: the AVX-512 tiers are emulated.
bool avx512_emulated();
// Highest tier whose features are all present.
Tier best_tier();

}  // namespace lowbit
