// Scalar twin of the dotgemm family (the oracle the SIMD kernels must match bit
// for bit), the scalar activation packer, and the packer's C entry point.
// Built with baseline flags: the entry point dispatches to the AVX2 packer
// only when asked to (the caller checked the tier).
#include <cstring>

#include "kernels/dotgemm/dotgemm.h"
#include "kernels/pack_levels.h"

namespace lowbit {

void dotgemm__scalar(const UKernelArgs& p) {
  // Any tile width: channel n of step s sits at w + s * w_stride + 4n.
  for (size_t m = 0; m < p.mr; ++m) {
    const uint8_t* a = p.a + m * p.a_stride;
    for (size_t n = 0; n < p.nr; ++n) {
      uint32_t sum = 0;  // wraps modulo 2^32 like the SIMD int32 lanes
      for (size_t s = 0; s < p.k_steps; ++s) {
        int16_t av[2], wv[2];
        std::memcpy(av, a + s * kDotgemmStepBytes, sizeof(av));
        std::memcpy(wv, p.w + s * p.w_stride + n * kDotgemmStepBytes, sizeof(wv));
        sum += uint32_t(int32_t(av[0]) * int32_t(wv[0]) + int32_t(av[1]) * int32_t(wv[1]));
      }
      p.c[m * p.c_stride + n] = int32_t(sum);
    }
  }
}

bool dotgemm_pack_a__scalar(const uint8_t* codes, size_t M, size_t K, int bits, const int16_t* levels, int16_t* out,
                            size_t out_cols) {
  return pack_levels_scalar(codes, M, K, bits, levels, out, out_cols);
}

int dotgemm_pack_activations(const uint8_t* codes, size_t M, size_t K, int bits, const int16_t* levels, int16_t* out,
                             size_t out_cols, int tier) {
#if LOWBIT_HAVE_X86_KERNELS
  const auto simd = dotgemm_pack_a__avx2;
#elif LOWBIT_HAVE_ARM_KERNELS
  const auto simd = dotgemm_pack_a__neon;
#else
  const decltype(&dotgemm_pack_a__scalar) simd = nullptr;
#endif
  return pack_levels_parallel<int16_t>(codes, M, K, bits, levels, out, out_cols, tier, dotgemm_pack_a__scalar, simd);
}

}  // namespace lowbit
