// Reference int8 GEMM microkernels for the llvm-mca comparison
// (bench/arm_mca.py): what an int8 engine's inner loop does per k step, in
// the usual register-tiled forms. Not part of the library; compiled only to
// assembly. Each loop computes a 4-row tile with int32 accumulators over
// `steps` k steps from pre-packed operands, like lowbit's kernels.
#include <arm_neon.h>

#include <cstddef>
#include <cstdint>

extern "C" {

#if defined(__ARM_FEATURE_DOTPROD)
// sdot (Armv8.2 dotprod), 4 rows x 16 channels per k quad = 256 MACs:
// activations packed as 4 rows x 4 k in one vector (lane-indexed sdot), weights
// as 16 channels x 4 k in four vectors; 16 sdot + 5 loads. The form of
// ruy/XNNPACK/llama.cpp dotprod kernels.
void int8_sdot_4x16(const int8_t* a, const int8_t* w, size_t steps, int32_t* c) {
  int32x4_t acc[4][4] = {};
  for (size_t s = 0; s < steps; ++s, a += 16, w += 64) {
    const int8x16_t av = vld1q_s8(a);
    int8x16_t wv[4];
    for (int j = 0; j < 4; ++j) wv[j] = vld1q_s8(w + 16 * j);
    for (int j = 0; j < 4; ++j) {
      acc[0][j] = vdotq_laneq_s32(acc[0][j], wv[j], av, 0);
      acc[1][j] = vdotq_laneq_s32(acc[1][j], wv[j], av, 1);
      acc[2][j] = vdotq_laneq_s32(acc[2][j], wv[j], av, 2);
      acc[3][j] = vdotq_laneq_s32(acc[3][j], wv[j], av, 3);
    }
  }
  for (int m = 0; m < 4; ++m)
    for (int j = 0; j < 4; ++j) vst1q_s32(c + 16 * m + 4 * j, acc[m][j]);
}
#endif

// smull/smlal2/sadalp (Armv8.0, no dot product; the gemmlowp/ruy A72-class
// form), 4 rows x 4 channels x 16 k per step = 256 MACs: per (row, channel)
// smull (8 products, int16) + smlal2 (8 more) + sadalp (pairs into int32);
// 48 multiply-accumulate instructions + 8 loads. (The two int16 products of a
// lane must not both be -128 * -128: such engines keep weights in [-127, 127].)
void int8_smull_4x4(const int8_t* a, const int8_t* w, size_t steps, int32_t* c) {
  int32x4_t acc[4][4] = {};
  for (size_t s = 0; s < steps; ++s, a += 64, w += 64) {
    int8x16_t av[4], wv[4];
    for (int i = 0; i < 4; ++i) av[i] = vld1q_s8(a + 16 * i);
    for (int i = 0; i < 4; ++i) wv[i] = vld1q_s8(w + 16 * i);
    for (int m = 0; m < 4; ++m)
      for (int n = 0; n < 4; ++n) {
        int16x8_t p = vmull_s8(vget_low_s8(av[m]), vget_low_s8(wv[n]));
        p = vmlal_high_s8(p, av[m], wv[n]);
        acc[m][n] = vpadalq_s16(acc[m][n], p);
      }
  }
  for (int m = 0; m < 4; ++m)
    for (int n = 0; n < 4; ++n) vst1q_s32(c + 16 * m + 4 * n, acc[m][n]);
}

}  // extern "C"
