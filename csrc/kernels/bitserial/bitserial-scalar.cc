// Scalar twin of the bitserial family: same layouts, byte-wise popcounts.
#include "kernels/bitserial/bitserial.h"

namespace lowbit {
namespace {
inline uint32_t popc8(uint8_t x) { return uint32_t(__builtin_popcount(x)); }
}  // namespace

void bitserial__scalar(const UKernelArgs& p) {
  const int32_t* coef = reinterpret_cast<const int32_t*>(p.tables);
  const int ba = coef[6];
  const size_t plane = p.k_steps * kBitserialStepBytes;
  for (size_t m = 0; m < p.mr; ++m) {
    const uint8_t* a = p.a + m * p.a_stride;
    uint32_t pop_a[2] = {0, 0};
    for (int b = 0; b < ba; ++b)
      for (size_t j = 0; j < plane; ++j) pop_a[b] += popc8(a[b * plane + j]);
    for (size_t n = 0; n < p.nr; ++n) {
      const uint8_t* w = p.w + n * p.w_stride;
      uint32_t pop_aw[2] = {0, 0};
      for (int b = 0; b < ba; ++b)
        for (size_t j = 0; j < plane; ++j) pop_aw[b] += popc8(uint8_t(a[b * plane + j] & w[j]));
      p.c[m * p.c_stride + n] = bitserial_combine(coef, ba, p.k_steps, pop_a, pop_aw, bitserial_row_popcount(w, p.k_steps));
    }
  }
}

}  // namespace lowbit
