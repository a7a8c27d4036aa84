// AVX2 activation packer (see ops/pack.h for the contract). 32 codes per
// vector; the row remainder goes through the scalar rule.
#include <immintrin.h>

#include <cstring>

#include "ops/pack.h"

namespace lowbit {
namespace {

// 32 codes -> 32/group bytes, each shifted left by `shift` (the packed bytes
// are < 2**(8 - shift), so 16-bit lane shifts never carry into the next byte).
// Returns the number of bytes written.
inline int pack32(__m256i v, int bits, int group, int shift, uint8_t* dst, __m256i* seen) {
  *seen = _mm256_or_si256(*seen, v);
  if (group == 1) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), _mm256_sll_epi16(v, _mm_cvtsi32_si128(shift)));
    return 32;
  }
  if (group == 8) {  // bits == 1: bit i of the mask is code i
    const uint32_t mask = uint32_t(_mm256_movemask_epi8(_mm256_slli_epi16(v, 7)));
    std::memcpy(dst, &mask, 4);
    return 4;
  }
  // pairs: a0 + (a1 << bits) in 16-bit lanes (vpmaddubsw, unsigned codes x small weights)
  const __m256i pair = _mm256_maddubs_epi16(v, _mm256_set1_epi16(int16_t(1 | (1 << (8 + bits)))));
  if (group == 2) {
    const __m128i lo = _mm256_castsi256_si128(pair), hi = _mm256_extracti128_si256(pair, 1);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), _mm_sll_epi16(_mm_packus_epi16(lo, hi), _mm_cvtsi32_si128(shift)));
    return 16;
  }
  // group == 4: quads in 32-bit lanes, then narrow 8 x int32 -> 8 bytes
  const __m256i quad = _mm256_madd_epi16(pair, _mm256_set1_epi32(1 | (1 << (16 + 2 * bits))));
  const __m256i bytes = _mm256_shuffle_epi8(_mm256_sll_epi32(quad, _mm_cvtsi32_si128(shift)), _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
                                                                    -1, -1, 0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1,
                                                                    -1, -1, -1, -1));
  const uint32_t lo = uint32_t(_mm256_extract_epi32(bytes, 0)), hi = uint32_t(_mm256_extract_epi32(bytes, 4));
  std::memcpy(dst, &lo, 4);
  std::memcpy(dst + 4, &hi, 4);
  return 8;
}

}  // namespace

bool pack_groups__avx2(const uint8_t* codes, size_t M, size_t K, int bits, int group, int shift, uint8_t* out,
                       size_t out_stride) {
  __m256i seen = _mm256_setzero_si256();
  const size_t kvec = K / 32 * 32, tail = K - kvec;
  const size_t tail_bytes = (tail + size_t(group) - 1) / size_t(group);
  const uint8_t* codes_end = codes + M * K;
  // lanes < tail: keeps a row's last codes and zeroes the bytes read past it
  const __m256i tail_mask = _mm256_cmpgt_epi8(
      _mm256_set1_epi8(char(tail)), _mm256_setr_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18,
                                                     19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31));
  for (size_t m = 0; m < M; ++m) {
    const uint8_t* row = codes + m * K;
    uint8_t* dst = out + m * out_stride;
    size_t j = 0;
    for (size_t k = 0; k < kvec; k += 32)
      j += size_t(pack32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + k)), bits, group, shift, dst + j,
                         &seen));
    if (tail) {  // the row's last codes, zero-padded to a full vector (zero codes pack to zero bits)
      __m256i v;
      if (row + kvec + 32 <= codes_end) {  // read on into the next row (inside the input) and mask
        v = _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + kvec)), tail_mask);
      } else {
        alignas(32) uint8_t in[32] = {};
        std::memcpy(in, row + kvec, tail);
        v = _mm256_load_si256(reinterpret_cast<const __m256i*>(in));
      }
      alignas(32) uint8_t packed[32];
      pack32(v, bits, group, shift, packed, &seen);
      std::memcpy(dst + j, packed, tail_bytes);
      j += tail_bytes;
    }
    std::memset(dst + j, 0, out_stride - j);
  }
  alignas(32) uint8_t lanes[32];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), seen);
  unsigned all = 0;
  for (uint8_t b : lanes) all |= b;
  return (all >> bits) == 0;
}

}  // namespace lowbit
