// dot8, AVX2 tier: vpmaddubsw (u8 x s8 -> int16 pair sums) + vpaddw into
// int16 accumulators, widened with vpmaddwd (ones) + vpaddd every flush16
// steps (bound in dot8.h). Tile: up to 4 rows x 16 channels. Per k quad: two
// 32-byte weight loads (16 channels x 4 levels) serve all rows; each row
// broadcasts its 32-bit activation quad once; 8 vpmaddubsw + 8 vpaddw
// (registers: 8 int16 accumulators + 2 weights + 1 broadcast + 1 product;
// the int32 sums wait in memory between flushes). Also the AVX2 packer.
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "kernels/dot8/dot8.h"

namespace lowbit {
namespace {

constexpr int kNR = 16;
constexpr size_t kStepW = size_t(kNR) * kDot8StepBytes;  // weight bytes per k quad

// The int16 accumulators of a tile between runs: row m, channels 0-7 and
// 8-15 (each 32-bit lane = one channel's two int16 pair sums).
template <int MR>
struct Acc16 {
  alignas(32) int16_t v[MR][2][kNR];
};

// `steps` k quads of MR rows (row m's quads at rows[m], consecutive) added
// to the int16 accumulators in acc (few enough registers for intrinsics).
template <int MR>
void run(const uint8_t* const* rows, const uint8_t* w, size_t steps, Acc16<MR>& acc) {
  __m256i lo[MR], hi[MR];
  for (int m = 0; m < MR; ++m) {
    lo[m] = _mm256_load_si256(reinterpret_cast<const __m256i*>(acc.v[m][0]));
    hi[m] = _mm256_load_si256(reinterpret_cast<const __m256i*>(acc.v[m][1]));
  }
  for (size_t s = 0; s < steps; ++s, w += kStepW) {
    const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w));
    const __m256i w1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + 32));
    for (int m = 0; m < MR; ++m) {
      int32_t quad;
      std::memcpy(&quad, rows[m] + s * kDot8StepBytes, 4);
      const __m256i x = _mm256_set1_epi32(quad);
      lo[m] = _mm256_add_epi16(lo[m], _mm256_maddubs_epi16(x, w0));
      hi[m] = _mm256_add_epi16(hi[m], _mm256_maddubs_epi16(x, w1));
    }
  }
  for (int m = 0; m < MR; ++m) {
    _mm256_store_si256(reinterpret_cast<__m256i*>(acc.v[m][0]), lo[m]);
    _mm256_store_si256(reinterpret_cast<__m256i*>(acc.v[m][1]), hi[m]);
  }
}

// One k quad of the full 4-row tile: ymm0-7 accumulate (row r: ymm 2r, 2r+1),
// ymm8/9 hold the weights, ymm10 the broadcast quad, ymm11 a product.
// Written in assembly: GCC spills the accumulators of the intrinsic form to
// the stack (about half the speed). No vzeroupper in the block: the compiler
// keeps ymm12-15 live across it (and emits vzeroupper itself on return).
#define LOWBIT_DOT8_ROW(ROW, A0, A1, OFF)                \
  "vpbroadcastd " OFF "(%[" ROW "],%[k]), %%ymm10\n\t"  \
  "vpmaddubsw %%ymm8, %%ymm10, %%ymm11\n\t"              \
  "vpaddw %%ymm11, %%ymm" A0 ", %%ymm" A0 "\n\t"         \
  "vpmaddubsw %%ymm9, %%ymm10, %%ymm11\n\t"              \
  "vpaddw %%ymm11, %%ymm" A1 ", %%ymm" A1 "\n\t"
#define LOWBIT_DOT8_STEP(WOFF, WOFF2, AOFF)                                        \
  "vmovdqu " WOFF "(%[w]), %%ymm8\n\t"                                             \
  "vmovdqu " WOFF2 "(%[w]), %%ymm9\n\t"                                            \
  LOWBIT_DOT8_ROW("a0", "0", "1", AOFF) LOWBIT_DOT8_ROW("a1", "2", "3", AOFF)      \
  LOWBIT_DOT8_ROW("a2", "4", "5", AOFF) LOWBIT_DOT8_ROW("a3", "6", "7", AOFF)

template <>
void run<4>(const uint8_t* const* rows, const uint8_t* w, size_t steps, Acc16<4>& acc) {
  size_t k = 0;  // byte offset into the rows
  const size_t kend = steps * kDot8StepBytes, kodd = (steps & 1) * kDot8StepBytes;
  __asm__ volatile(
      "vmovdqa 0(%[acc]), %%ymm0\n\t" "vmovdqa 32(%[acc]), %%ymm1\n\t"
      "vmovdqa 64(%[acc]), %%ymm2\n\t" "vmovdqa 96(%[acc]), %%ymm3\n\t"
      "vmovdqa 128(%[acc]), %%ymm4\n\t" "vmovdqa 160(%[acc]), %%ymm5\n\t"
      "vmovdqa 192(%[acc]), %%ymm6\n\t" "vmovdqa 224(%[acc]), %%ymm7\n\t"
      "test %[kodd], %[kodd]\n\t"
      "jz 1f\n\t"
      LOWBIT_DOT8_STEP("0", "32", "0")
      "add $64, %[w]\n\t"
      "add $4, %[k]\n\t"
      "1:\n\t"
      "cmp %[kend], %[k]\n\t"
      "jae 2f\n\t"
      ".p2align 4\n\t"
      "3:\n\t"
      LOWBIT_DOT8_STEP("0", "32", "0")
      LOWBIT_DOT8_STEP("64", "96", "4")
      "sub $-128, %[w]\n\t"
      "add $8, %[k]\n\t"
      "cmp %[kend], %[k]\n\t"
      "jb 3b\n\t"
      "2:\n\t"
      "vmovdqa %%ymm0, 0(%[acc])\n\t" "vmovdqa %%ymm1, 32(%[acc])\n\t"
      "vmovdqa %%ymm2, 64(%[acc])\n\t" "vmovdqa %%ymm3, 96(%[acc])\n\t"
      "vmovdqa %%ymm4, 128(%[acc])\n\t" "vmovdqa %%ymm5, 160(%[acc])\n\t"
      "vmovdqa %%ymm6, 192(%[acc])\n\t" "vmovdqa %%ymm7, 224(%[acc])\n\t"
      : [w] "+r"(w), [k] "+r"(k)
      : [a0] "r"(rows[0]), [a1] "r"(rows[1]), [a2] "r"(rows[2]), [a3] "r"(rows[3]), [kend] "r"(kend),
        [kodd] "r"(kodd), [acc] "r"(&acc.v[0][0][0])
      : "cc", "memory", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10",
        "xmm11");
}
#undef LOWBIT_DOT8_STEP
#undef LOWBIT_DOT8_ROW

// Adds the int16 lane pairs of every row (vpmaddwd with ones: a channel's
// two lanes into its int32 lane) to the int32 sums and clears them: the
// widening of dot8.h's bound.
template <int MR>
void widen(Acc16<MR>& acc, int32_t (*sums)[kNR]) {
  const __m256i ones = _mm256_set1_epi16(1);
  for (int m = 0; m < MR; ++m)
    for (int h = 0; h < 2; ++h) {
      __m256i* a = reinterpret_cast<__m256i*>(acc.v[m][h]);
      __m256i* d = reinterpret_cast<__m256i*>(sums[m] + 8 * h);
      _mm256_store_si256(d, _mm256_add_epi32(_mm256_load_si256(d), _mm256_madd_epi16(_mm256_load_si256(a), ones)));
      _mm256_store_si256(a, _mm256_setzero_si256());
    }
}

// K is walked in runs of consecutive quads: within one segment of the
// indirection buffer (convolution) and within one widening window of
// flush16 steps. The int16 accumulators live in memory between runs.
template <int MR>
void tile(const UKernelArgs& p) {
  alignas(32) int32_t sums[MR][kNR] = {};
  Acc16<MR> acc = {};
  const size_t S = p.k_steps, window = p.flush16 ? p.flush16 : 1;
  size_t since_widen = 0;
  for (size_t s = 0; s < S;) {
    const uint8_t* rows[MR];
    size_t end = S;
    if (p.a_ind) {
      const size_t seg = s / p.seg_steps, off = (s - seg * p.seg_steps) * kDot8StepBytes;
      for (int m = 0; m < MR; ++m) rows[m] = p.a_ind[size_t(m) * p.a_ind_stride + seg] + off;
      end = std::min(S, (seg + 1) * p.seg_steps);
    } else {
      for (int m = 0; m < MR; ++m) rows[m] = p.a + size_t(m) * p.a_stride + s * kDot8StepBytes;
    }
    end = std::min(end, s + (window - since_widen));
    run<MR>(rows, p.w + s * kStepW, end - s, acc);
    since_widen += end - s;
    s = end;
    if (since_widen == window || s == S) {
      widen<MR>(acc, sums);
      since_widen = 0;
    }
  }
  for (int m = 0; m < MR; ++m) std::memcpy(p.c + size_t(m) * p.c_stride, sums[m], p.nr * sizeof(int32_t));
}

}  // namespace

void dot8_4x16__avx2(const UKernelArgs& p) {
  for_row_blocks(p, 4, [](const UKernelArgs& q) {
    switch (q.mr) {
      case 1: return tile<1>(q);
      case 2: return tile<2>(q);
      case 3: return tile<3>(q);
      default: return tile<4>(q);
    }
  });
}

bool dot8_pack_a__avx2(const uint8_t* codes, size_t M, size_t K, int bits, const uint8_t* levels, uint8_t* out,
                       size_t out_cols) {
  // 1-4-bit codes: one vpshufb on a 16-entry level table; 8-bit codes whose
  // levels are the codes themselves: a copy; any other 8-bit codebook: scalar.
  bool identity = bits == 8;
  for (int i = 0; identity && i < 256; ++i) identity = levels[i] == i;
  if (bits == 8 && !identity) return dot8_pack_a__scalar(codes, M, K, bits, levels, out, out_cols);
  alignas(16) uint8_t table[16] = {0};
  if (bits <= 4) std::memcpy(table, levels, size_t(1) << bits);
  const __m256i lut = _mm256_broadcastsi128_si256(_mm_load_si128(reinterpret_cast<const __m128i*>(table)));
  const size_t kvec = K / 32 * 32;
  const unsigned mask = (1u << bits) - 1;
  __m256i seen = _mm256_setzero_si256();
  unsigned seen_tail = 0;
  for (size_t m = 0; m < M; ++m) {
    const uint8_t* row = codes + m * K;
    uint8_t* dst = out + m * out_cols;
    if (identity) {
      std::memcpy(dst, row, K);
    } else {
      for (size_t k = 0; k < kvec; k += 32) {
        const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + k));
        seen = _mm256_or_si256(seen, v);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + k), _mm256_shuffle_epi8(lut, v));
      }
      for (size_t k = kvec; k < K; ++k) {
        seen_tail |= row[k];
        dst[k] = levels[row[k] & mask];
      }
    }
    std::memset(dst + K, 0, out_cols - K);
  }
  alignas(32) uint8_t lanes[32];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), seen);
  for (uint8_t b : lanes) seen_tail |= b;
  return (seen_tail >> bits) == 0;
}

}  // namespace lowbit
