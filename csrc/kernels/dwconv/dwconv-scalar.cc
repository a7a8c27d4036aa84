// Scalar twin of the depthwise kernel and of the level decoder (the oracle
// the SIMD versions must match bit for bit).
#include "kernels/dwconv/dwconv.h"

namespace lowbit {

void dwconv_row__scalar(const DwconvRowArgs& a) {
  for (size_t ox = 0; ox < a.OW; ++ox) {
    const int16_t* x = a.x_row + ox * a.x_step;
    int32_t* out = a.out + ox * a.Cp;
    for (size_t c = 0; c < a.Cp; ++c) {
      uint32_t sum = 0;  // wraps modulo 2^32 like the SIMD int32 lanes
      for (size_t t = 0; t < a.taps; ++t)
        sum += uint32_t(int32_t(x[a.tap_off[t] + c]) * int32_t(a.w[t * a.Cp + c]));
      out[c] = int32_t(sum);
    }
  }
}

bool decode_levels__scalar(const uint8_t* codes, size_t n, int bits, const int16_t* levels, int16_t* out) {
  const unsigned limit = 1u << bits;
  unsigned bad = 0;
  for (size_t i = 0; i < n; ++i) {
    const unsigned c = codes[i];
    bad |= unsigned(c >= limit);
    out[i] = levels[c < limit ? c : 0];
  }
  return bad == 0;
}

}  // namespace lowbit
