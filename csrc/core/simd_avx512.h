// The one intrinsics include of the AVX-512 kernel translation units.
//
// Normal builds: <immintrin.h>; each TU is compiled with its tier's flags
// (CMakeLists.txt), and runtime dispatch decides whether it may run.
//
// SIMDe test build (CMake option LOWBIT_SIMDE_AVX512, scripts/test-simde.sh):
// the same TUs are compiled with AVX2 flags only, against SIMDe's portable
// implementations of the AVX-512 intrinsics (header-only, Debian
// libsimde-dev), and CMake defines LOWBIT_SIMDE_TIER to the TU's tier (2 =
// avx512, 3 = avx512icl). The kernels' logic then runs, bit for bit, on
// CPUs without AVX-512; speed means nothing in that build.
//
// Contract for the TUs: test LOWBIT_AVX512_VNNI (not __AVX512VNNI__) before
// using an avx512icl-only intrinsic, and LOWBIT_X86_INLINE_ASM before any
// inline-asm fast path (SIMDe cannot emulate asm; the intrinsic path with the
// same results is used instead).
#pragma once

#if defined(LOWBIT_SIMDE_TIER)
#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>
// SIMDe 0.7.4 (Debian 12) defines this alias with the masked form's arity.
#undef _mm512_madd_epi16
#define _mm512_madd_epi16(a, b) simde_mm512_madd_epi16(a, b)
#include <cstdint>
#include <cstring>
// Intrinsics SIMDe 0.7.4 lacks, written lane by lane with the instruction's
// documented semantics (Intel SDM): masked lanes are neither read nor written.
namespace lowbit_simde {
inline simde__m512i srai_epi32(simde__m512i a, unsigned imm) {
  alignas(64) int32_t v[16];
  simde_mm512_store_si512(v, a);
  for (int32_t& x : v) x = imm > 31 ? (x < 0 ? -1 : 0) : (x >> imm);
  return simde_mm512_load_si512(v);
}
inline void mask_storeu_epi32(void* p, uint16_t k, simde__m512i a) {
  alignas(64) int32_t v[16];
  simde_mm512_store_si512(v, a);
  for (int i = 0; i < 16; ++i)
    if ((k >> i) & 1) std::memcpy(static_cast<char*>(p) + 4 * i, &v[i], 4);
}
inline simde__m512i maskz_loadu_epi8(uint64_t k, const void* p) {
  alignas(64) uint8_t v[64] = {};
  for (int i = 0; i < 64; ++i)
    if ((k >> i) & 1) v[i] = static_cast<const uint8_t*>(p)[i];
  return simde_mm512_load_si512(v);
}
inline int32_t reduce_add_epi32(simde__m512i a) {
  alignas(64) uint32_t v[16];
  simde_mm512_store_si512(v, a);
  uint32_t s = 0;
  for (uint32_t x : v) s += x;  // wraps like vpaddd
  return int32_t(s);
}
inline int64_t reduce_add_epi64(simde__m512i a) {
  alignas(64) uint64_t v[8];
  simde_mm512_store_si512(v, a);
  uint64_t s = 0;
  for (uint64_t x : v) s += x;
  return int64_t(s);
}
inline simde__m512i i32gather_epi32(simde__m512i idx, const void* base, int scale) {
  alignas(64) int32_t ix[16], v[16];
  simde_mm512_store_si512(ix, idx);
  for (int i = 0; i < 16; ++i)
    std::memcpy(&v[i], static_cast<const char*>(base) + int64_t(ix[i]) * scale, 4);
  return simde_mm512_load_si512(v);
}
}  // namespace lowbit_simde
#define _mm512_srai_epi32(a, imm) lowbit_simde::srai_epi32(a, imm)
#define _mm512_mask_storeu_epi32(p, k, a) lowbit_simde::mask_storeu_epi32(p, k, a)
#define _mm512_maskz_loadu_epi8(k, p) lowbit_simde::maskz_loadu_epi8(k, p)
#define _mm512_reduce_add_epi32(a) lowbit_simde::reduce_add_epi32(a)
#define _mm512_reduce_add_epi64(a) lowbit_simde::reduce_add_epi64(a)
#define _mm512_i32gather_epi32(idx, base, scale) lowbit_simde::i32gather_epi32(idx, base, scale)
#define LOWBIT_AVX512_VNNI (LOWBIT_SIMDE_TIER >= 3)
#define LOWBIT_X86_INLINE_ASM 0
#else
#include <immintrin.h>
#if defined(__AVX512VNNI__)
#define LOWBIT_AVX512_VNNI 1
#else
#define LOWBIT_AVX512_VNNI 0
#endif
#define LOWBIT_X86_INLINE_ASM 1
#endif
