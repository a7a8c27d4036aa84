// Scalar twin of the grouplut family: same layouts and tables, one lookup at a
// time, int32 sums wrapping modulo 2^32 like the SIMD lanes.
#include "kernels/grouplut/grouplut.h"

namespace lowbit {

void grouplut__scalar(const UKernelArgs& p) {
  const uint8_t* tab = reinterpret_cast<const uint8_t*>(p.tables);
  for (size_t m = 0; m < p.mr; ++m) {
    const uint8_t* a = p.a + m * p.a_stride;
    for (size_t n = 0; n < p.nr; ++n) {
      uint32_t sum = 0;
      for (size_t g = 0; g < p.k_steps; ++g)
        sum += uint32_t(int32_t(int8_t(tab[size_t(a[g]) * 16 + (p.w[g * p.w_stride + n] & 15)])));
      p.c[m * p.c_stride + n] = int32_t(sum);
    }
  }
}

}  // namespace lowbit
