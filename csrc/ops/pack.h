// Run-time activation packers.
#pragma once
#include <cstddef>
#include <cstdint>

#include "core/cpu_features.h"

namespace lowbit {

// Packs `group` consecutive codes of `bits` bits into one byte, LSB first:
//   out[m][j] = sum_i codes[m][group*j + i] << (bits*i),  for j < ceil(K/group)
// and zero-fills out[m][ceil(K/group) .. out_stride); each byte is then
// shifted left by `shift` (0..2, grouplut's table-offset form). Requires
// group*bits + shift <= 8
// (vector paths for group 1, 2, 3, 4, 6, 8; others run the scalar rule). codes is
// M x K, row stride K (C-contiguous).
// Returns false (output unspecified) when any code is >= 2**bits.
bool pack_groups(const uint8_t* codes, size_t M, size_t K, int bits, int group, int shift, uint8_t* out,
                 size_t out_stride, Tier tier);

// A 2-D convolution's geometry on NHWC input (B, H, W, C).
struct ConvGeometry {
  size_t B, H, W, C;
  size_t kh, kw, sh, sw, ph, pw, dh, dw;  // kernel, stride, padding, dilation
  size_t OH, OW;                          // output size (>= 1, computed by the caller)
};

// pack_groups on the calling thread only (the GEMM driver packs row blocks
// inside its own tasks).
bool pack_groups_serial(const uint8_t* codes, size_t M, size_t K, int bits, int group, int shift, uint8_t* out,
                        size_t out_stride, Tier tier);

// im2col for the convolution fallback. x is (B*H*W, C) codes; out is
// (B*OH*OW, kh*kw*C): row (b, oy, ox) holds, tap by tap in (ky, kx) order,
// the C codes of input pixel (b, oy*sh - ph + ky*dh, ox*sw - pw + kx*dw), or
// C copies of pad_code where that pixel is outside the image. Rows of
// consecutive valid taps (dw == 1) are copied with one memcpy.
void im2col_nhwc(const uint8_t* x, const ConvGeometry& g, uint8_t pad_code, uint8_t* out);

// Max pooling of float32 NHWC x (B, H, W, C) -> out (B, OH, OW, C) over the
// windows of g; taps outside the image never win (they are -inf), and a NaN
// in a window gives NaN (NumPy's maximum).
void maxpool_nhwc_f32(const float* x, const ConvGeometry& g, float* out);

// The scalar max-pool walk of one output row r (image r / OH, output y r % OH)
// of NHWC x: each output pixel's C values start at `lowest` and take
// o = larger(o, v) for the C values v of every window tap inside the image, in
// (ky, kx) order (taps outside never count). out points at the whole output.
template <class T, class Larger>
void maxpool_row_nhwc(const T* x, const ConvGeometry& g, size_t r, T* out, T lowest, Larger larger) {
  const size_t C = g.C, b = r / g.OH, oy = r % g.OH;
  T* o = out + r * g.OW * C;
  for (size_t ox = 0; ox < g.OW; ++ox, o += C) {
    for (size_t c = 0; c < C; ++c) o[c] = lowest;
    for (size_t ky = 0; ky < g.kh; ++ky) {
      const ptrdiff_t iy = ptrdiff_t(oy * g.sh + ky * g.dh) - ptrdiff_t(g.ph);
      if (iy < 0 || iy >= ptrdiff_t(g.H)) continue;
      for (size_t kx = 0; kx < g.kw; ++kx) {
        const ptrdiff_t ix = ptrdiff_t(ox * g.sw + kx * g.dw) - ptrdiff_t(g.pw);
        if (ix < 0 || ix >= ptrdiff_t(g.W)) continue;
        const T* v = x + ((b * g.H + size_t(iy)) * g.W + size_t(ix)) * C;
        for (size_t c = 0; c < C; ++c) o[c] = larger(o[c], v[c]);
      }
    }
  }
}

// pack_groups_serial on an M x K block of a wider codes matrix (e.g. the
// tile of a layer's output codes that a GEMM task has just written): row m
// of the block starts at codes + m * codes_stride (codes_stride >= K), and
// output row m (at out + m * out_stride) gets exactly out_bytes bytes, the
// packed codes then zeros (ceil(K/group) <= out_bytes <= out_stride); the
// bytes after them are left alone. Only the block's own codes are read
// (never the bytes between its rows: other threads may be writing them).
bool pack_groups_block(const uint8_t* codes, size_t codes_stride, size_t M, size_t K, int bits, int group, int shift,
                       uint8_t* out, size_t out_stride, size_t out_bytes, Tier tier);

// The tiers' block packers (pack_groups_block's contract).
bool pack_groups__scalar(const uint8_t* codes, size_t codes_stride, size_t M, size_t K, int bits, int group,
                         int shift, uint8_t* out, size_t out_stride, size_t out_bytes);
#if LOWBIT_HAVE_X86_KERNELS
bool pack_groups__avx2(const uint8_t* codes, size_t codes_stride, size_t M, size_t K, int bits, int group,
                       int shift, uint8_t* out, size_t out_stride, size_t out_bytes);
#endif
#if LOWBIT_HAVE_ARM_KERNELS
bool pack_groups__neon(const uint8_t* codes, size_t M, size_t K, int bits, int group, int shift, uint8_t* out,
                       size_t out_stride);
#endif

}  // namespace lowbit
