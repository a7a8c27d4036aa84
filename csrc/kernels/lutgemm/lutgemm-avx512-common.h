// Shared helpers of the AVX-512 lutgemm kernels. Everything has internal
// linkage: each including translation unit compiles its own copy with its own
// ISA flags, so no AVX-512 instruction can leak into another tier.
#pragma once
#include "core/simd_avx512.h"

#include "kernels/lutgemm/lutgemm.h"

namespace lowbit {
namespace {
inline __m512i load_step(const uint8_t* p, __mmask64 k) { return _mm512_maskz_loadu_epi8(k, p); }
inline __m512i table64(const int8_t* t) {
  return _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(t)));
}
// Bitwise select: bits of a where mask is 1, bits of b elsewhere.
inline __m512i select(__m512i mask, __m512i a, __m512i b) { return _mm512_ternarylogic_epi32(mask, a, b, 0xCA); }

// 64-byte iterations (four 16-byte family steps); the last one may be partial.
struct Steps {
  size_t iters;          // number of iterations
  __mmask64 last_mask;   // valid bytes of the last iteration
};
inline Steps steps_of(size_t k_steps) {
  const size_t rem = k_steps % 4;
  return Steps{(k_steps + 3) / 4, rem ? (__mmask64(1) << (16 * rem)) - 1 : ~__mmask64(0)};
}
inline __mmask64 iter_mask(const Steps& st, size_t it) { return it + 1 == st.iters ? st.last_mask : ~__mmask64(0); }

// Runtime tile size -> template instance (tiles at the matrix edge are smaller).
#define LOWBIT_TILE_4x4(fn, p)                                                   \
  do {                                                                           \
    switch ((p).mr * 8 + (p).nr) {                                               \
      case 8 + 1: return fn<1, 1>(p);  case 8 + 2: return fn<1, 2>(p);           \
      case 8 + 3: return fn<1, 3>(p);  case 8 + 4: return fn<1, 4>(p);           \
      case 16 + 1: return fn<2, 1>(p); case 16 + 2: return fn<2, 2>(p);          \
      case 16 + 3: return fn<2, 3>(p); case 16 + 4: return fn<2, 4>(p);          \
      case 24 + 1: return fn<3, 1>(p); case 24 + 2: return fn<3, 2>(p);          \
      case 24 + 3: return fn<3, 3>(p); case 24 + 4: return fn<3, 4>(p);          \
      case 32 + 1: return fn<4, 1>(p); case 32 + 2: return fn<4, 2>(p);          \
      case 32 + 3: return fn<4, 3>(p); default: return fn<4, 4>(p);              \
    }                                                                            \
  } while (0)

#define LOWBIT_TILE_4x2(fn, p)                                                   \
  do {                                                                           \
    switch ((p).mr * 8 + (p).nr) {                                               \
      case 8 + 1: return fn<1, 1>(p);  case 8 + 2: return fn<1, 2>(p);           \
      case 16 + 1: return fn<2, 1>(p); case 16 + 2: return fn<2, 2>(p);          \
      case 24 + 1: return fn<3, 1>(p); case 24 + 2: return fn<3, 2>(p);          \
      case 32 + 1: return fn<4, 1>(p); default: return fn<4, 2>(p);              \
    }                                                                            \
  } while (0)

}  // namespace
}  // namespace lowbit
