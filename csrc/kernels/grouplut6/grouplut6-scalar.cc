// Scalar twin of grouplut6: same layouts and tables, one lookup at a time,
// int32 sums wrapping modulo 2^32 like the SIMD lanes; indirect rows too.
#include "kernels/grouplut6/grouplut6.h"

namespace lowbit {

void grouplut6__scalar(const UKernelArgs& p) {
  const uint8_t* tab = reinterpret_cast<const uint8_t*>(p.tables);
  for (size_t m = 0; m < p.mr; ++m) {
    for (size_t n = 0; n < p.nr; ++n) {
      uint32_t sum = 0;
      for (size_t g = 0; g < p.k_steps; ++g) {
        const uint8_t code = p.a_ind ? p.a_ind[m * p.a_ind_stride + g / p.seg_steps][g % p.seg_steps]
                                     : p.a[m * p.a_stride + g];
        sum += uint32_t(int32_t(int8_t(tab[size_t(code) * 64 + (p.w[g * p.w_stride + n] & 63)])));
      }
      p.c[m * p.c_stride + n] = int32_t(sum);
    }
  }
}

}  // namespace lowbit
