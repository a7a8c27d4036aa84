// AVX2 activation packers (see ops/pack.h for the contract): groups of 1, 2,
// 4 or 8 codes from 32 codes per vector; groups of 3 or 6 codes (grouplut6's
// layouts) from 96 codes per block of four vectors.
#include <immintrin.h>

#include <cstring>

#include "ops/pack.h"

namespace lowbit {
namespace {

// How far a row's vector loads may read (the masked tail of a row reads on
// into the next): to the end of the codes when the rows are contiguous,
// else to the end of the row (a block of a wider matrix: the bytes between
// its rows belong to others).
inline const uint8_t* read_limit(const uint8_t* codes, size_t codes_stride, size_t M, size_t K, const uint8_t* row) {
  return codes_stride == K ? codes + M * K : row + K;
}

// Whether no code OR-ed into `seen` has a bit at or above `bits`.
inline bool in_range(__m256i seen, int bits) {
  return _mm256_testz_si256(seen, _mm256_set1_epi8(char(0xFF << bits))) != 0;
}

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

// ---- groups of 3 codes (bits <= 2) and of 6 codes (bits == 1): grouplut6.
//
// A block is 96 codes: four 32-byte loads at offsets 0, 24, 48, 72 (each reads
// 8 bytes past its 24 codes, so a block reads 104 bytes). vpermd gives each
// 128-bit lane 12 consecutive codes (bytes 0-11 and 12-23 of the load);
// vpshufb moves each group's codes into a slot, zero bytes after them (slots
// of 4 bytes for group 3, 8 for group 6); vpmaddubsw weights code i of a slot
// by 2^(bits*i) into int16 partial sums, and vpmaddwd with ones (group 3) or
// vpsadbw against zero (group 6, partial sums < 256) adds a slot's partial
// sums into its 32- or 64-bit lane: the group's packed code. The narrowing
// (unsigned saturating packs, exact since codes < 256) interleaves 128-bit
// lanes; one vpermd restores group order.

// Lane 0 <- bytes 0..11 of v, lane 1 <- bytes 12..23.
inline __m256i split12(__m256i v) { return _mm256_permutevar8x32_epi32(v, _mm256_setr_epi32(0, 1, 2, 3, 3, 4, 5, 6)); }

// The 32 bytes at src; with kTail only the first `valid` of them (<= 0: none),
// the others zeroed: they are the next row's codes, read on past a row end.
template <bool kTail>
inline __m256i load_codes(const uint8_t* src, int valid, __m256i* seen) {
  __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src));
  if (kTail)
    v = _mm256_and_si256(v, _mm256_cmpgt_epi8(_mm256_set1_epi8(char(valid < 0 ? 0 : valid)),
                                              _mm256_setr_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15,
                                                               16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28,
                                                               29, 30, 31)));
  *seen = _mm256_or_si256(*seen, v);  // every byte kept lies in the row
  return v;
}

// Packed group-3 codes of 8 groups (24 codes at src) in 32-bit lanes.
template <bool kTail>
inline __m256i group3_lanes(const uint8_t* src, int valid, __m256i weights, __m256i* seen) {
  const __m256i v = load_codes<kTail>(src, valid, seen);
  const __m256i slots = _mm256_shuffle_epi8(
      split12(v), _mm256_setr_epi8(0, 1, 2, -1, 3, 4, 5, -1, 6, 7, 8, -1, 9, 10, 11, -1, 0, 1, 2, -1, 3, 4, 5, -1, 6,
                                   7, 8, -1, 9, 10, 11, -1));
  return _mm256_madd_epi16(_mm256_maddubs_epi16(slots, weights), _mm256_set1_epi16(1));
}

// Packed group-6 codes of 4 groups (24 codes at src) in 64-bit lanes.
template <bool kTail>
inline __m256i group6_lanes(const uint8_t* src, int valid, __m256i* seen) {
  const __m256i v = load_codes<kTail>(src, valid, seen);
  const __m256i slots = _mm256_shuffle_epi8(
      split12(v), _mm256_setr_epi8(0, 1, 2, 3, 4, 5, -1, -1, 6, 7, 8, 9, 10, 11, -1, -1, 0, 1, 2, 3, 4, 5, -1, -1, 6,
                                   7, 8, 9, 10, 11, -1, -1));
  const __m256i partial = _mm256_maddubs_epi16(slots, _mm256_setr_epi8(1, 2, 4, 8, 16, 32, 0, 0, 1, 2, 4, 8, 16, 32, 0,
                                                                      0, 1, 2, 4, 8, 16, 32, 0, 0, 1, 2, 4, 8, 16, 32,
                                                                      0, 0));
  return _mm256_sad_epu8(partial, _mm256_setzero_si256());
}

// 96 codes at src (104 bytes readable; with kTail only the first `valid`
// count, the rest read as code 0) -> 96 / group bytes at dst; returns that count.
template <bool kTail>
inline int pack96(const uint8_t* src, int valid, int bits, int group, __m128i shift, uint8_t* dst, __m256i* seen) {
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  if (group == 3) {
    const int8_t w1 = int8_t(1 << bits), w2 = int8_t(1 << (2 * bits));
    const __m256i weights = _mm256_setr_epi8(1, w1, w2, 0, 1, w1, w2, 0, 1, w1, w2, 0, 1, w1, w2, 0, 1, w1, w2, 0, 1,
                                             w1, w2, 0, 1, w1, w2, 0, 1, w1, w2, 0);
    const __m256i r0 = group3_lanes<kTail>(src, valid, weights, seen), r1 = group3_lanes<kTail>(src + 24, valid - 24, weights, seen);
    const __m256i r2 = group3_lanes<kTail>(src + 48, valid - 48, weights, seen), r3 = group3_lanes<kTail>(src + 72, valid - 72, weights, seen);
    // lane 0: groups 0-3, 8-11, 16-19, 24-27; lane 1: 4-7, 12-15, 20-23, 28-31
    const __m256i bytes = _mm256_packus_epi16(_mm256_packus_epi32(r0, r1), _mm256_packus_epi32(r2, r3));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst),
                        _mm256_sll_epi16(_mm256_permutevar8x32_epi32(bytes, order), shift));
    return 32;
  }
  // group 6: r_i holds groups 4i, 4i+1 (lane 0) and 4i+2, 4i+3 (lane 1)
  const __m256i r0 = group6_lanes<kTail>(src, valid, seen), r1 = group6_lanes<kTail>(src + 24, valid - 24, seen);
  const __m256i r2 = group6_lanes<kTail>(src + 48, valid - 48, seen), r3 = group6_lanes<kTail>(src + 72, valid - 72, seen);
  // 16-bit groups; lane 0: 0 1 4 5 8 9 12 13, lane 1: 2 3 6 7 10 11 14 15
  const __m256i words = _mm256_packus_epi32(_mm256_packus_epi32(r0, r1), _mm256_packus_epi32(r2, r3));
  const __m256i bytes = _mm256_packus_epi16(_mm256_permutevar8x32_epi32(words, order), _mm256_setzero_si256());
  const __m128i packed = _mm_unpacklo_epi64(_mm256_castsi256_si128(bytes), _mm256_extracti128_si256(bytes, 1));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), _mm_sll_epi16(packed, shift));
  return 16;
}

bool pack_groups36(const uint8_t* codes, size_t codes_stride, size_t M, size_t K, int bits, int group, int shift,
                   uint8_t* out, size_t out_stride, size_t out_bytes) {
  __m256i seen = _mm256_setzero_si256();
  const __m128i shift_count = _mm_cvtsi32_si128(shift);
  for (size_t m = 0; m < M; ++m) {
    const uint8_t* row = codes + m * codes_stride;
    const uint8_t* codes_end = read_limit(codes, codes_stride, M, K, row);
    uint8_t* dst = out + m * out_stride;
    size_t j = 0, k = 0;
    for (; k + 104 <= K; k += 96) j += size_t(pack96<false>(row + k, 96, bits, group, shift_count, dst + j, &seen));
    while (k < K) {  // the row's last codes, zero-padded (zero codes pack to zero bits)
      const size_t n = K - k < 96 ? K - k : 96;
      alignas(32) uint8_t packed[32];
      if (row + k + 104 <= codes_end) {  // read on into the next row (inside the input) and mask
        pack96<true>(row + k, int(n), bits, group, shift_count, packed, &seen);
      } else {
        alignas(32) uint8_t in[128] = {};
        std::memcpy(in, row + k, n);
        pack96<false>(in, 96, bits, group, shift_count, packed, &seen);
      }
      const size_t bytes = (n + size_t(group) - 1) / size_t(group);
      std::memcpy(dst + j, packed, bytes);
      j += bytes;
      k += n;
    }
    if (j < out_bytes) std::memset(dst + j, 0, out_bytes - j);
  }
  return in_range(seen, bits);
}

}  // namespace

bool pack_groups__avx2(const uint8_t* codes, size_t codes_stride, size_t M, size_t K, int bits, int group,
                       int shift, uint8_t* out, size_t out_stride, size_t out_bytes) {
  if (group == 3 || group == 6)
    return pack_groups36(codes, codes_stride, M, K, bits, group, shift, out, out_stride, out_bytes);
  __m256i seen = _mm256_setzero_si256();
  const size_t kvec = K / 32 * 32, tail = K - kvec;
  const size_t tail_bytes = (tail + size_t(group) - 1) / size_t(group);
  // lanes < tail: keeps a row's last codes and zeroes the bytes read past it
  const __m256i tail_mask = _mm256_cmpgt_epi8(
      _mm256_set1_epi8(char(tail)), _mm256_setr_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18,
                                                     19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31));
  for (size_t m = 0; m < M; ++m) {
    const uint8_t* row = codes + m * codes_stride;
    const uint8_t* codes_end = read_limit(codes, codes_stride, M, K, row);
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
    if (j < out_bytes) std::memset(dst + j, 0, out_bytes - j);
  }
  return in_range(seen, bits);
}

}  // namespace lowbit
