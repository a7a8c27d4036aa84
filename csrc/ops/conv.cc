#include "ops/conv.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <memory>
#include <vector>

#include "core/thread_pool.h"
#include "kernels/dotgemm/dotgemm.h"

namespace lowbit {

namespace {

const DwconvKernelInfo kDwconvKernels[] = {
    {"dwconv_1x16__scalar", Tier::scalar, dwconv_row__scalar, decode_levels__scalar,
     "depthwise convolution on int16 levels, int32 sums, scalar twin"},
#if LOWBIT_HAVE_X86_KERNELS
    {"dwconv_1x16__avx2", Tier::avx2, dwconv_row__avx2, decode_levels__avx2,
     "depthwise convolution, 16 channels a ymm: vpmullw + vpaddw int16 taps widened to int32 (vpmulld for wide "
     "levels); codes decoded with vpshufb"},
#endif
};

size_t round_up(size_t v, size_t m) { return (v + m - 1) / m * m; }

// Runs task(i) for every i in [0, n): on the calling thread when the whole
// loop's work (values decoded or copied, or multiply-adds) is below
// kGemmInlineWork, where waking the pool costs more than a second thread
// saves (the GEMM driver's rule, ops/gemm.h); on the thread pool otherwise.
// Tasks are independent, so the result is the same either way.
template <class Task>
void run_tasks(size_t n, size_t work, Task& task) {
  if (work < kGemmInlineWork) {
    for (size_t i = 0; i < n; ++i) task(i);
    return;
  }
  parallel_for(n, task);
}
size_t output_rows(const ConvGeometry& g) { return g.B * g.OH * g.OW; }

// The input decoded to zero-padded levels: (B, Hp, Wp, Cp) int16.
struct PaddedLevels {
  size_t Hp, Wp, Cp;
  std::unique_ptr<int16_t[]> data;
  const int16_t* pixel(size_t b, size_t y, size_t x) const { return data.get() + ((b * Hp + y) * Wp + x) * Cp; }
};

// Decodes padded input row y (0 <= y < Hp) of image b into dst (Wp * Cp
// levels): level 0 outside the image and in channels >= C. Returns false on
// a code >= 2^bits.
bool decode_padded_row(const ConvGeometry& g, const uint8_t* codes, int bits, const int16_t* levels,
                       DecodeFn decode, size_t Cp, size_t b, size_t y, int16_t* dst) {
  const size_t row = (g.W + 2 * g.pw) * Cp;
  if (y < g.ph || y >= g.ph + g.H) {
    std::memset(dst, 0, row * sizeof(int16_t));
    return true;
  }
  const uint8_t* src = codes + ((b * g.H + (y - g.ph)) * g.W) * g.C;
  std::memset(dst, 0, g.pw * Cp * sizeof(int16_t));
  std::memset(dst + (g.pw + g.W) * Cp, 0, g.pw * Cp * sizeof(int16_t));
  if (Cp == g.C) return decode(src, g.W * g.C, bits, levels, dst + g.pw * Cp);
  bool ok = true;
  for (size_t x = 0; x < g.W; ++x) {
    int16_t* px = dst + (g.pw + x) * Cp;
    ok &= decode(src + x * g.C, g.C, bits, levels, px);
    std::memset(px + g.C, 0, (Cp - g.C) * sizeof(int16_t));
  }
  return ok;
}

// The whole input decoded (grouped convolution), in parallel over rows.
bool decode_padded(const ConvGeometry& g, const uint8_t* codes, int bits, const int16_t* levels, DecodeFn decode,
                   size_t Cp, PaddedLevels* out) {
  out->Hp = g.H + 2 * g.ph;
  out->Wp = g.W + 2 * g.pw;
  out->Cp = Cp;
  const size_t row = out->Wp * Cp;
  out->data.reset(new int16_t[g.B * out->Hp * row]);
  std::atomic<bool> bad{false};
  auto task = [&](size_t r) {  // one padded input row
    if (!decode_padded_row(g, codes, bits, levels, decode, Cp, r / out->Hp, r % out->Hp, out->data.get() + r * row))
      bad.store(true, std::memory_order_relaxed);
  };
  run_tasks(g.B * out->Hp, g.B * out->Hp * row, task);
  return !bad.load();
}


}  // namespace

const DwconvKernelInfo* dwconv_kernels(size_t* count) {
  *count = sizeof(kDwconvKernels) / sizeof(kDwconvKernels[0]);
  return kDwconvKernels;
}

size_t conv_out_size(size_t in, size_t k, size_t stride, size_t pad, size_t dilation) {
  const size_t span = dilation * (k - 1) + 1;
  if (in + 2 * pad < span) return 0;
  return (in + 2 * pad - span) / stride + 1;
}

int dwconv_tap_flush(int max_abs_a, int max_abs_w) {
  const long p = long(max_abs_a) * long(max_abs_w);
  if (p > 32767) return 0;
  return p == 0 ? 1 << 30 : int(32767 / p);
}

bool run_dwconv(const DwconvCall& call) {
  const ConvGeometry& g = call.g;
  if (output_rows(g) == 0 || g.C == 0) return true;
  const size_t Cp = round_up(g.C, kDwconvChannelBlock), Wp = g.W + 2 * g.pw, Hp = g.H + 2 * g.ph;
  const size_t taps = g.kh * g.kw, row_elems = Wp * Cp;
  std::vector<size_t> tap_off(taps);
  for (size_t ky = 0; ky < g.kh; ++ky)
    for (size_t kx = 0; kx < g.kw; ++kx) tap_off[ky * g.kw + kx] = (ky * g.dh * Wp + kx * g.dw) * Cp;
  // A task owns a band of output rows of one image and decodes just the
  // padded input rows the band reads (its own band plus the kernel's halo)
  // into a per-thread buffer, so the levels stay in cache: bands of at most
  // ~128 KiB of levels, and at least 4 tasks per thread when possible.
  const size_t halo = (g.kh - 1) * g.dh;
  const size_t fit = std::max<size_t>(1, ((size_t(128) << 10) / (row_elems * sizeof(int16_t)) + g.sh) / g.sh);
  const size_t want = (g.B * g.OH + 4 * size_t(get_num_threads()) - 1) / (4 * size_t(get_num_threads()));
  const size_t band = std::max<size_t>(1, std::min({fit, want, g.OH}));
  const size_t bands_per_image = (g.OH + band - 1) / band;
  const bool fused = call.epilogue.kind != OutKind::int32;
  std::atomic<bool> bad{false};
  auto task = [&](size_t i) {
    const size_t b = i / bands_per_image, oy0 = i % bands_per_image * band, oy1 = std::min(g.OH, oy0 + band);
    const size_t y0 = oy0 * g.sh, y1 = std::min(Hp, (oy1 - 1) * g.sh + halo + 1);  // padded input rows read
    thread_local std::vector<int16_t> levels;
    thread_local std::vector<int32_t> scratch;
    levels.resize((y1 - y0) * row_elems);
    scratch.resize(g.OW * Cp);
    bool ok = true;
    for (size_t y = y0; y < y1; ++y)
      ok &= decode_padded_row(g, call.x, call.bits, call.a_levels, call.kernel->decode, Cp, b, y,
                              levels.data() + (y - y0) * row_elems);
    if (!ok) {
      bad.store(true, std::memory_order_relaxed);
      return;
    }
    DwconvRowArgs a;
    a.w = call.w;
    a.tap_off = tap_off.data();
    a.taps = taps;
    a.Cp = Cp;
    a.OW = g.OW;
    a.x_step = g.sw * Cp;
    a.tap_flush = call.tap_flush;
    a.out = scratch.data();
    for (size_t oy = oy0; oy < oy1; ++oy) {
      a.x_row = levels.data() + (oy * g.sh - y0) * row_elems;
      call.kernel->row(a);
      const size_t m0 = (b * g.OH + oy) * g.OW;
      if (fused) {
        apply_epilogue(call.epilogue, scratch.data(), Cp, m0, m0 + g.OW, 0, g.C);
      } else {
        for (size_t ox = 0; ox < g.OW; ++ox)
          std::memcpy(call.c + (m0 + ox) * g.C, scratch.data() + ox * Cp, g.C * sizeof(int32_t));
      }
    }
  };
  run_tasks(g.B * bands_per_image, output_rows(g) * Cp * taps, task);
  return !bad.load();
}

bool run_grouped_conv(const GroupedConvCall& call, const GemmGeometry& gg) {
  const ConvGeometry& g = call.g;
  const size_t M = output_rows(g);
  if (M == 0) return true;
  PaddedLevels xp;
  if (!decode_padded(g, call.x, call.bits, call.a_levels, call.decode, g.C, &xp)) return false;
  const size_t cg = g.C / call.groups, opg = call.cout / call.groups, taps = g.kh * g.kw;
  const size_t k_steps = (taps * cg + 1) / 2, cols = 2 * k_steps;  // int16 levels a row, K padded to even
  // One group's im2col of levels (dotgemm's packed activation layout), reused by every group.
  std::unique_ptr<int16_t[]> cols_buf(new int16_t[M * cols]);
  GemmCall gemm;
  gemm.kernel = call.kernel;
  gemm.a = reinterpret_cast<const uint8_t*>(cols_buf.get());
  gemm.a_stride = cols * sizeof(int16_t);
  gemm.tables = nullptr;
  gemm.M = M;
  gemm.N = opg;
  gemm.k_steps = k_steps;
  gemm.flush8 = gemm.flush16 = 1;  // unused by dotgemm
  gemm.correction = 0;              // padding is level 0
  const size_t per_task = std::max<size_t>(1, M / (4 * size_t(get_num_threads())));
  for (size_t grp = 0; grp < call.groups; ++grp) {
    auto fill = [&](size_t i) {
      for (size_t m = i * per_task; m < std::min(M, (i + 1) * per_task); ++m) {
        const size_t b = m / (g.OH * g.OW), oy = m / g.OW % g.OH, ox = m % g.OW;
        int16_t* dst = cols_buf.get() + m * cols;
        for (size_t ky = 0; ky < g.kh; ++ky)
          for (size_t kx = 0; kx < g.kw; ++kx, dst += cg)
            std::memcpy(dst, xp.pixel(b, oy * g.sh + ky * g.dh, ox * g.sw + kx * g.dw) + grp * cg,
                        cg * sizeof(int16_t));
        if (cols > taps * cg) *dst = 0;
      }
    };
    run_tasks((M + per_task - 1) / per_task, M * taps * cg, fill);
    gemm.w = call.w + grp * gg.w_bytes;
    if (call.epilogue.kind == OutKind::int32) {
      gemm.c = call.c + grp * opg;
      gemm.c_stride = call.cout;
    } else {
      gemm.epilogue = call.epilogue;
      shift_columns(gemm.epilogue, grp * opg);
    }
    run_gemm(gemm, gg);
  }
  return true;
}

DecodeFn grouped_conv_decoder(Tier tier) {
  size_t count = 0;
  const DwconvKernelInfo* reg = dwconv_kernels(&count);
  DecodeFn decode = reg[0].decode;
  for (size_t i = 0; i < count; ++i)
    if (reg[i].tier <= tier) decode = reg[i].decode;
  return decode;
}

}  // namespace lowbit
