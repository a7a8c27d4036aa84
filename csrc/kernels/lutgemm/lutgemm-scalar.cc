// Scalar twin of the lutgemm family: the same packed layouts and tables, one
// index at a time. It is the oracle the SIMD kernels must match bit for bit.
#include "kernels/lutgemm/lutgemm.h"

namespace lowbit {
namespace {

// Sum over one row pair of 4 lookups per byte, with a table lookup function.
template <class Lookup>
uint32_t row_pair_sum(const uint8_t* a, const uint8_t* w, size_t nbytes, Lookup lookup) {
  uint32_t sum = 0;  // wraps modulo 2^32 exactly like the SIMD int32 lanes
  for (size_t j = 0; j < nbytes; ++j) {
    const unsigned i1 = (a[j] & 0xCC) | (w[j] & 0x33);
    const unsigned i2 = (w[j] & 0xCC) | (a[j] & 0x33);
    sum += uint32_t(lookup(0, i1 & 15) + lookup(0, i1 >> 4) + lookup(1, i2 & 15) + lookup(1, i2 >> 4));
  }
  return sum;
}

template <class Lookup>
void tile(const UKernelArgs& p, Lookup lookup) {
  const size_t nbytes = p.k_steps * kLutgemmStepBytes;
  for (size_t m = 0; m < p.mr; ++m)
    for (size_t n = 0; n < p.nr; ++n)
      p.c[m * p.c_stride + n] = int32_t(row_pair_sum(p.a + m * p.a_stride, p.w + n * p.w_stride, nbytes, lookup));
}

}  // namespace

void lutgemm_w2a2_i8__scalar(const UKernelArgs& p) {
  const int8_t* t = p.tables;
  tile(p, [t](int which, unsigned idx) { return int32_t(t[which * 16 + idx]); });
}

void lutgemm_w2a2_split__scalar(const UKernelArgs& p) {
  const int8_t* t = p.tables;
  tile(p, [t](int which, unsigned idx) {
    const int32_t lo = uint8_t(t[which * 32 + idx]);
    const int32_t hi = t[which * 32 + 16 + idx];
    return hi * 256 + lo;
  });
}

}  // namespace lowbit
