// AVX2 depthwise kernel and level decoder (contract and accumulator bound:
// dwconv.h). Channels are the vector dimension: 16 int16 levels a ymm.
#include <immintrin.h>

#include "kernels/dwconv/dwconv.h"

namespace lowbit {

namespace {

inline __m256i load16(const int16_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }

// acc[p] += the int16 products of taps [t0, t1) for output pixel p of the block
// (PX neighbouring pixels x 16 channels). One weight load serves the PX pixels.
template <int PX>
inline void add_taps_i16(const DwconvRowArgs& a, const int16_t* x, size_t c, size_t t0, size_t t1, __m256i* acc) {
  for (size_t t = t0; t < t1; ++t) {
    const __m256i wv = load16(a.w + t * a.Cp + c);
    const int16_t* xt = x + a.tap_off[t] + c;
    for (int p = 0; p < PX; ++p)
      acc[p] = _mm256_add_epi16(acc[p], _mm256_mullo_epi16(load16(xt + size_t(p) * a.x_step), wv));
  }
}

// PX pixels x 16 channels: int16 products, tap_flush taps per int16
// accumulation, widened into two int32 vectors per pixel (channels c..c+7 and
// c+8..c+15).
template <int PX>
inline void block_i16(const DwconvRowArgs& a, const int16_t* x, size_t c, int32_t* out) {
  __m256i lo[PX], hi[PX], acc[PX];
  for (int p = 0; p < PX; ++p) lo[p] = hi[p] = _mm256_setzero_si256();
  const size_t flush = size_t(a.tap_flush);
  for (size_t t0 = 0; t0 < a.taps; t0 += flush) {
    for (int p = 0; p < PX; ++p) acc[p] = _mm256_setzero_si256();
    add_taps_i16<PX>(a, x, c, t0, t0 + flush < a.taps ? t0 + flush : a.taps, acc);
    for (int p = 0; p < PX; ++p) {
      lo[p] = _mm256_add_epi32(lo[p], _mm256_cvtepi16_epi32(_mm256_castsi256_si128(acc[p])));
      hi[p] = _mm256_add_epi32(hi[p], _mm256_cvtepi16_epi32(_mm256_extracti128_si256(acc[p], 1)));
    }
  }
  for (int p = 0; p < PX; ++p) {
    int32_t* o = out + size_t(p) * a.Cp + c;
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(o), lo[p]);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + 8), hi[p]);
  }
}

// block_i16 when every tap fits one int16 accumulation (taps <= tap_flush, the
// usual case): no flush loop and no int32 running sums; TAPS > 0 fixes the tap
// count at compile time (3x3: the tap loop unrolls).
template <int PX, int TAPS>
inline void block_i16_once(const DwconvRowArgs& a, const int16_t* x, size_t c, int32_t* out) {
  __m256i acc[PX];
  for (int p = 0; p < PX; ++p) acc[p] = _mm256_setzero_si256();
  add_taps_i16<PX>(a, x, c, 0, TAPS > 0 ? size_t(TAPS) : a.taps, acc);
  for (int p = 0; p < PX; ++p) {
    int32_t* o = out + size_t(p) * a.Cp + c;
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(o), _mm256_cvtepi16_epi32(_mm256_castsi256_si128(acc[p])));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + 8), _mm256_cvtepi16_epi32(_mm256_extracti128_si256(acc[p], 1)));
  }
}

// block_i16_once for 3 x 3 taps whose kernel rows are 3 neighbouring input
// pixels (tap ky * 3 + kx at tap_off[3 ky] + kx * Cp, i.e. dw == 1) and output
// pixels SW input pixels apart (x_step = SW * Cp): output pixel p reads input
// pixel p * SW + kx of each kernel row, so one kernel row needs only
// (PX - 1) * SW + 3 loads for all PX pixels (the same products, summed in the same
// int16 order: tap by tap).
template <int PX, int SW>
inline void block_3x3_rows(const DwconvRowArgs& a, const int16_t* x, size_t c, int32_t* out) {
  constexpr int kIn = (PX - 1) * SW + 3;
  __m256i acc[PX];
  for (int p = 0; p < PX; ++p) acc[p] = _mm256_setzero_si256();
  const size_t Cp = a.Cp;
  for (size_t ky = 0; ky < 3; ++ky) {
    const int16_t* r = x + a.tap_off[3 * ky] + c;
    __m256i in[kIn];
    for (int i = 0; i < kIn; ++i) in[i] = load16(r + size_t(i) * Cp);
    for (int kx = 0; kx < 3; ++kx) {
      const __m256i wv = load16(a.w + (3 * ky + size_t(kx)) * Cp + c);
      for (int p = 0; p < PX; ++p) acc[p] = _mm256_add_epi16(acc[p], _mm256_mullo_epi16(in[p * SW + kx], wv));
    }
  }
  for (int p = 0; p < PX; ++p) {
    int32_t* o = out + size_t(p) * Cp + c;
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(o), _mm256_cvtepi16_epi32(_mm256_castsi256_si128(acc[p])));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + 8), _mm256_cvtepi16_epi32(_mm256_extracti128_si256(acc[p], 1)));
  }
}

// Whether the 9 taps are 3 kernel rows of 3 neighbouring input pixels (block_3x3_rows).
inline bool taps_3x3_rows(const DwconvRowArgs& a) {
  if (a.taps != 9) return false;
  for (size_t t = 0; t < 9; ++t)
    if (a.tap_off[t] != a.tap_off[t / 3 * 3] + t % 3 * a.Cp) return false;
  return true;
}

// Wide levels (max|a| * max|w| > 32767): int32 products, 8 channels a vector.
inline void block_i32(const DwconvRowArgs& a, const int16_t* x, size_t c, int32_t* out) {
  for (size_t h = 0; h < 16; h += 8) {
    __m256i acc = _mm256_setzero_si256();
    for (size_t t = 0; t < a.taps; ++t) {
      const __m256i xv = _mm256_cvtepi16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + a.tap_off[t] + c + h)));
      const __m256i wv = _mm256_cvtepi16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a.w + t * a.Cp + c + h)));
      acc = _mm256_add_epi32(acc, _mm256_mullo_epi32(xv, wv));
    }
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + c + h), acc);
  }
}

// The row: blocks of kPixels output pixels (Block4), then single pixels (Block1),
// every 16-channel block of each.
using BlockFn = void (*)(const DwconvRowArgs&, const int16_t*, size_t, int32_t*);
template <BlockFn Block4, BlockFn Block1>
void row_blocks(const DwconvRowArgs& a) {
  constexpr size_t kPixels = 4;  // output pixels a register block (12 accumulators + weights in 16 ymm)
  size_t ox = 0;
  for (; ox + kPixels <= a.OW; ox += kPixels)
    for (size_t c = 0; c < a.Cp; c += kDwconvChannelBlock) Block4(a, a.x_row + ox * a.x_step, c, a.out + ox * a.Cp);
  for (; ox < a.OW; ++ox)
    for (size_t c = 0; c < a.Cp; c += kDwconvChannelBlock) Block1(a, a.x_row + ox * a.x_step, c, a.out + ox * a.Cp);
}

}  // namespace

void dwconv_row__avx2(const DwconvRowArgs& a) {
  if (a.tap_flush > 0 && a.taps <= size_t(a.tap_flush)) {
    if (taps_3x3_rows(a) && a.x_step == a.Cp) return row_blocks<block_3x3_rows<4, 1>, block_3x3_rows<1, 1>>(a);
    if (taps_3x3_rows(a) && a.x_step == 2 * a.Cp) return row_blocks<block_3x3_rows<4, 2>, block_3x3_rows<1, 2>>(a);
    if (a.taps == 9) return row_blocks<block_i16_once<4, 9>, block_i16_once<1, 9>>(a);
    return row_blocks<block_i16_once<4, 0>, block_i16_once<1, 0>>(a);
  }
  if (a.tap_flush > 0) return row_blocks<block_i16<4>, block_i16<1>>(a);
  for (size_t ox = 0; ox < a.OW; ++ox)
    for (size_t c = 0; c < a.Cp; c += kDwconvChannelBlock) block_i32(a, a.x_row + ox * a.x_step, c, a.out + ox * a.Cp);
}

bool decode_levels__avx2(const uint8_t* codes, size_t n, int bits, const int16_t* levels, int16_t* out) {
  if (bits > 4) return decode_levels__scalar(codes, n, bits, levels, out);
  // 1-4-bit levels are in [-128, 127]: an int8 table for vpshufb (entries
  // past 2^bits are never selected by an in-range code).
  alignas(16) int8_t table[16] = {};
  for (int i = 0; i < (1 << bits); ++i) table[i] = int8_t(levels[i]);
  const __m256i tbl = _mm256_broadcastsi128_si256(_mm_load_si128(reinterpret_cast<const __m128i*>(table)));
  __m256i seen = _mm256_setzero_si256();  // max code seen (range check once at the end)
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m256i c = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes + i));
    seen = _mm256_max_epu8(seen, c);
    const __m256i lv = _mm256_shuffle_epi8(tbl, c);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), _mm256_cvtepi8_epi16(_mm256_castsi256_si128(lv)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i + 16), _mm256_cvtepi8_epi16(_mm256_extracti128_si256(lv, 1)));
  }
  alignas(32) uint8_t m[32];
  _mm256_store_si256(reinterpret_cast<__m256i*>(m), seen);
  unsigned top = 0;
  for (uint8_t v : m) top = v > top ? v : top;
  const bool tail_ok = decode_levels__scalar(codes + i, n - i, bits, levels, out + i);
  return tail_ok && top < (1u << bits);
}

}  // namespace lowbit
