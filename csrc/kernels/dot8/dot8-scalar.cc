// Scalar twin of the dot8 family (the oracle the SIMD kernel must match bit
// for bit), the scalar activation packer, and the packer's entry point.
// Built with baseline flags: the entry point dispatches to the AVX2 packer
// only when asked to (the caller checked the tier).
#include "kernels/dot8/dot8.h"
#include "kernels/pack_levels.h"

namespace lowbit {

void dot8__scalar(const UKernelArgs& p) {
  // Any tile width: channel n of step s sits at w + s * w_stride + 4n. The
  // int16 stage of the SIMD kernel never wraps (dot8.h), so plain int32 sums
  // (wrapping modulo 2^32 like its int32 lanes) are the same result.
  for (size_t m = 0; m < p.mr; ++m) {
    for (size_t n = 0; n < p.nr; ++n) {
      uint32_t sum = 0;
      for (size_t s = 0; s < p.k_steps; ++s) {
        // direct rows, or segment s / seg_steps of the indirection buffer
        const uint8_t* x = p.a_ind ? p.a_ind[m * p.a_ind_stride + s / p.seg_steps] + (s % p.seg_steps) * kDot8StepBytes
                                   : p.a + m * p.a_stride + s * kDot8StepBytes;
        const int8_t* w = reinterpret_cast<const int8_t*>(p.w + s * p.w_stride + n * kDot8StepBytes);
        sum += uint32_t(int32_t(x[0]) * w[0] + int32_t(x[1]) * w[1] + int32_t(x[2]) * w[2] + int32_t(x[3]) * w[3]);
      }
      p.c[m * p.c_stride + n] = int32_t(sum);
    }
  }
}

bool dot8_pack_a__scalar(const uint8_t* codes, size_t M, size_t K, int bits, const uint8_t* levels, uint8_t* out,
                         size_t out_cols) {
  return pack_levels_scalar(codes, M, K, bits, levels, out, out_cols);
}

int dot8_pack_activations(const uint8_t* codes, size_t M, size_t K, int bits, const uint8_t* levels, uint8_t* out,
                          size_t out_cols, int tier) {
#if LOWBIT_HAVE_X86_KERNELS
  const auto simd = dot8_pack_a__avx2;
#elif LOWBIT_HAVE_ARM_KERNELS
  const auto simd = dot8_pack_a__neon;
#else
  const decltype(&dot8_pack_a__scalar) simd = nullptr;
#endif
  return pack_levels_parallel<uint8_t>(codes, M, K, bits, levels, out, out_cols, tier, dot8_pack_a__scalar, simd);
}

}  // namespace lowbit
