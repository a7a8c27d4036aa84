// Scalar twins of the grouplut and grouplut6 families: same layouts and
// tables, one lookup at a time, int32 sums wrapping modulo 2^32 like the SIMD
// lanes. Both support the indirect (segmented) activation rows used by
// convolution. They differ only in the table width (16 or 64 entries, stored
// at a stride of 32 or 64 bytes).
#include "kernels/grouplut/grouplut.h"
#include "kernels/grouplut6/grouplut6.h"

namespace lowbit {
namespace {

template <size_t kTableStride, unsigned kIndexMask>
void scalar_tile(const UKernelArgs& p) {
  const uint8_t* tab = reinterpret_cast<const uint8_t*>(p.tables);
  for (size_t m = 0; m < p.mr; ++m) {
    for (size_t n = 0; n < p.nr; ++n) {
      uint32_t sum = 0;
      for (size_t g = 0; g < p.k_steps; ++g) {
        const uint8_t byte = p.a_ind ? p.a_ind[m * p.a_ind_stride + g / p.seg_steps][g % p.seg_steps]
                                     : p.a[m * p.a_stride + g];
        sum += uint32_t(int32_t(int8_t(tab[size_t(byte >> p.a_code_shift) * kTableStride + (p.w[g * p.w_stride + n] & kIndexMask)])));
      }
      p.c[m * p.c_stride + n] = int32_t(sum - uint32_t(p.correction));
    }
  }
}

}  // namespace

void grouplut__scalar(const UKernelArgs& p) { scalar_tile<32, 15>(p); }
void grouplut6__scalar(const UKernelArgs& p) { scalar_tile<64, 63>(p); }

}  // namespace lowbit
