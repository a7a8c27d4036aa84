#include "runtime/steps.h"

#include <algorithm>
#include <atomic>
#include <cstring>

#include "kernels/dot8/dot8.h"
#include "kernels/dotgemm/dotgemm.h"

namespace lowbit {
namespace runtime {

Epilogue EpilogueSpec::params() const {
  Epilogue e;
  e.kind = kind;
  e.scale = scale;
  e.bias = bias;
  e.clamp_lo = clamp_lo;
  e.clamp_hi = clamp_hi;
  e.inv_step = inv_step;
  e.qmin = qmin;
  e.qmax = qmax;
  e.simd = simd;
  e.scale64 = scale64;
  e.bias64 = bias64;
  e.step64 = step64;
  if (kind == OutKind::codes) e.fast = &fast;
  return e;
}

Epilogue EpilogueSpec::make(const Context& c) const {
  Epilogue e = params();
  if (residual >= 0) {
    e.residual = c.at<float>(residual) + residual_col;
    e.residual_stride = residual_stride;
  }
  if (kind == OutKind::float32 || kind == OutKind::int32)
    e.out = c.at<float>(out) + out_col;  // int32: the GEMM writes GemmCall::c (set from this address)
  else
    e.out = c.at<uint8_t>(out) + out_col;
  e.out_stride = out_stride;
  if (codes >= 0) {
    e.codes = c.at<uint8_t>(codes) + codes_col;
    e.codes_stride = codes_stride;
    e.codes_step = codes_step;
    e.codes_qn = codes_qn;
    e.codes_qp = codes_qp;
  }
  return e;
}

bool QuantizeStep::run(Context& c) const {
  if (nchw && c.check_finite) {  // the plan's first step checks the caller's input as it reads it
    std::atomic<bool> nonfinite{false};
    quantize_nchw_to_nhwc(c.at<const float>(src), B, C, H, W, params, c.at<uint8_t>(dst), &nonfinite);
    c.nonfinite = nonfinite.load();
    return !c.nonfinite;
  }
  if (nchw)
    quantize_nchw_to_nhwc(c.at<const float>(src), B, C, H, W, params, c.at<uint8_t>(dst));
  else
    quantize_f32(c.at<const float>(src), n, params, c.at<uint8_t>(dst));
  return true;
}

bool DequantizeStep::run(Context& c) const {
  dequantize_codes(c.at<const uint8_t>(src), n, levels.data(), step, c.at<float>(dst));
  return true;
}

bool LayoutStep::run(Context& c) const {
  switch (kind) {
    case Kind::nchw_to_nhwc:
      nchw_to_nhwc_f32(c.at<const float>(src), d0, d1, d2, d3, c.at<float>(dst));
      break;
    case Kind::nhwc_to_nchw:
      nhwc_to_nchw_f32(c.at<const float>(src), d0, d1, d2, d3, c.at<float>(dst));
      break;
    case Kind::flatten_f32:
      flatten_nhwc_f32(c.at<const float>(src), d0, d1, d2, d3, c.at<float>(dst));
      break;
    case Kind::flatten_u8:
      flatten_nhwc_u8(c.at<const uint8_t>(src), d0, d1, d2, d3, c.at<uint8_t>(dst));
      break;
    case Kind::copy:
      std::memcpy(c.at<uint8_t>(dst), c.at<const uint8_t>(src), d0);
      break;
  }
  return true;
}

bool EltwiseStep::run(Context& c) const {
  switch (kind) {
    case Kind::add:
      add_f32(c.at<const float>(a), c.at<const float>(b), n, c.at<float>(dst));
      break;
    case Kind::clamp:
      clamp_f32(c.at<const float>(a), n, lo, hi, c.at<float>(dst));
      break;
    case Kind::affine:
      affine_f32(c.at<const float>(a), n / C, C, scale.data(), bias.data(), c.at<float>(dst));
      break;
  }
  return true;
}

bool PoolStep::run(Context& c) const {
  switch (kind) {
    case Kind::max:
      maxpool_nhwc(c.at<const float>(src), g, c.at<float>(dst), simd);
      break;
    case Kind::avg:
      avgpool_nhwc_f32(c.at<const float>(src), g, count_include_pad, c.at<float>(dst));
      break;
    case Kind::adaptive:
      adaptive_avgpool_nhwc_f32(c.at<const float>(src), g.B, g.H, g.W, g.C, g.OH, g.OW, c.at<float>(dst));
      break;
    case Kind::max_codes:
      maxpool_nhwc_u8(c.at<const uint8_t>(src), g, c.at<uint8_t>(dst), simd);
      break;
  }
  return true;
}

namespace {

// memcpy of n bytes for the short runs of a small-Cin gather: fixed-size
// copies (plain vector moves) with the last one overlapping, reading and
// writing only [0, n).
inline void copy_short(uint8_t* d, const uint8_t* s, size_t n) {
  if (n >= 16) {
    for (size_t i = 0; i + 16 <= n; i += 16) std::memcpy(d + i, s + i, 16);
    std::memcpy(d + n - 16, s + n - 16, 16);
  } else if (n >= 8) {
    std::memcpy(d, s, 8);
    std::memcpy(d + n - 8, s + n - 8, 8);
  } else if (n >= 4) {
    std::memcpy(d, s, 4);
    std::memcpy(d + n - 4, s + n - 4, 4);
  } else {
    for (size_t i = 0; i < n; ++i) d[i] = s[i];
  }
}

// copy_short for an n of the size class kRun (copy_run_class), fixed at compile
// time: 1: n in [4, 8], 2: [8, 16], 3: [16, 32], 0: any n (copy_short itself).
template <int kRun>
inline void copy_run(uint8_t* d, const uint8_t* s, size_t n) {
  constexpr size_t w = kRun == 1 ? 4 : kRun == 2 ? 8 : 16;
  if (kRun == 0) return copy_short(d, s, n);
  std::memcpy(d, s, w);
  std::memcpy(d + n - w, s + n - w, w);
}

inline int copy_run_class(size_t n) {
  return n >= 16 && n <= 32 ? 3 : n >= 8 && n <= 16 ? 2 : n >= 4 && n <= 8 ? 1 : 0;
}

// Output row m of the gather (output pixel (b, oy, ox)), any pixel: padding
// taps get `pad`, consecutive valid taps of one kernel row (dw == 1) are one
// copy (copy_run<kRun>, kw * C elements).
template <class T, int kRun>
void im2col_row(const T* x, const ConvGeometry& g, T pad, size_t b, size_t oy, size_t ox, T* o) {
  const size_t C = g.C;
  const ptrdiff_t ix0 = ptrdiff_t(ox * g.sw) - ptrdiff_t(g.pw);
  for (size_t ky = 0; ky < g.kh; ++ky, o += g.kw * C) {
    const ptrdiff_t iy = ptrdiff_t(oy * g.sh + ky * g.dh) - ptrdiff_t(g.ph);
    if (iy < 0 || iy >= ptrdiff_t(g.H)) {
      std::fill(o, o + g.kw * C, pad);
      continue;
    }
    const T* row = x + (b * g.H + size_t(iy)) * g.W * C;
    if (g.dw == 1 && ix0 >= 0 && ix0 + ptrdiff_t(g.kw) <= ptrdiff_t(g.W)) {
      copy_run<kRun>(reinterpret_cast<uint8_t*>(o), reinterpret_cast<const uint8_t*>(row + size_t(ix0) * C),
                     g.kw * C * sizeof(T));
      continue;
    }
    for (size_t kx = 0; kx < g.kw; ++kx) {
      const ptrdiff_t ix = ix0 + ptrdiff_t(kx * g.dw);
      if (ix >= 0 && ix < ptrdiff_t(g.W))
        copy_short(reinterpret_cast<uint8_t*>(o + kx * C), reinterpret_cast<const uint8_t*>(row + size_t(ix) * C),
                   C * sizeof(T));
      else
        std::fill(o + kx * C, o + (kx + 1) * C, pad);
    }
  }
}

// First output coordinate whose taps along one axis all lie inside the input
// (o * s - p >= 0), and one past the last (o * s - p + span <= n, span the
// kernel's extent): interior pixels are [lo, hi) on both axes (empty: lo >= hi).
inline void interior_range(size_t n, size_t out, size_t s, size_t p, size_t span, size_t* lo, size_t* hi) {
  *lo = (p + s - 1) / s;
  *hi = n + p >= span ? std::min(out, (n + p - span) / s + 1) : 0;
}

// im2col_nhwc's rows [m0, m1) (row m: output pixel m of B*OH*OW) on
// elements of type T, each row written into out_stride elements (the tail
// zeroed). A pixel whose taps all lie inside the input (with dw == 1) copies
// its kh kernel rows of kw * C elements with copy_run<kRun> and zeroes the
// tail with 16-byte stores made before the copies (those reaching into the data
// are overwritten by it), branching on nothing; other pixels take im2col_row.
template <class T, int kRun>
void im2col_rows(const T* x, const ConvGeometry& g, T pad, size_t out_stride, size_t m0, size_t m1, T* out) {
  static constexpr uint8_t kZeros[16] = {};
  const size_t row_elems = g.W * g.C, run = g.kw * g.C * sizeof(T), tap_row = g.dh * row_elems;
  const size_t k_bytes = g.kh * run, row_bytes = out_stride * sizeof(T);
  size_t oy_lo, oy_hi, ox_lo, ox_hi;
  interior_range(g.H, g.OH, g.sh, g.ph, (g.kh - 1) * g.dh + 1, &oy_lo, &oy_hi);
  interior_range(g.W, g.OW, g.sw, g.pw, g.kw, &ox_lo, &ox_hi);
  if (g.dw != 1 || row_bytes < 16) ox_hi = 0;  // every pixel through im2col_row
  size_t ox = m0 % g.OW, oy = (m0 / g.OW) % g.OH, b = m0 / (g.OW * g.OH);  // output pixel m, stepped below
  for (size_t m = m0; m < m1; ++m) {
    T* o = out + m * out_stride;
    if (oy >= oy_lo && oy < oy_hi && ox >= ox_lo && ox < ox_hi) {
      uint8_t* ob = reinterpret_cast<uint8_t*>(o);
      for (size_t z = k_bytes; z < row_bytes; z += 16) std::memcpy(ob + std::min(z, row_bytes - 16), kZeros, 16);
      const T* src = x + (b * g.H + oy * g.sh - g.ph) * row_elems + (ox * g.sw - g.pw) * g.C;
      for (size_t ky = 0; ky < g.kh; ++ky)
        copy_run<kRun>(ob + ky * run, reinterpret_cast<const uint8_t*>(src + ky * tap_row), run);
    } else {
      im2col_row<T, kRun>(x, g, pad, b, oy, ox, o);
      std::fill(o + g.kh * g.kw * g.C, o + out_stride, T(0));
    }
    if (++ox == g.OW) {  // the next output pixel (no divisions per row)
      ox = 0;
      if (++oy == g.OH) {
        oy = 0;
        ++b;
      }
    }
  }
}

template <class T>
void im2col_strided(const T* x, const ConvGeometry& g, T pad, size_t out_stride, size_t m0, size_t m1, T* out) {
  switch (copy_run_class(g.kw * g.C * sizeof(T))) {
    case 1: return im2col_rows<T, 1>(x, g, pad, out_stride, m0, m1, out);
    case 2: return im2col_rows<T, 2>(x, g, pad, out_stride, m0, m1, out);
    case 3: return im2col_rows<T, 3>(x, g, pad, out_stride, m0, m1, out);
    default: return im2col_rows<T, 0>(x, g, pad, out_stride, m0, m1, out);
  }
}

}  // namespace

void Im2colStep::gather_rows(Context& c, size_t m0, size_t m1) const {
  if (elem == 2)
    im2col_strided(c.at<const int16_t>(src), g, pad, out_stride, m0, m1, c.at<int16_t>(dst));
  else
    im2col_strided(c.at<const uint8_t>(src), g, uint8_t(pad), out_stride, m0, m1, c.at<uint8_t>(dst));
}

bool Im2colStep::run(Context& c) const {
  if (elem == 2 || out_stride != g.kh * g.kw * g.C)
    gather_rows(c, 0, g.B * g.OH * g.OW);
  else
    im2col_nhwc(c.at<const uint8_t>(src), g, uint8_t(pad), c.at<uint8_t>(dst));
  return true;
}

bool ChannelSliceStep::run(Context& c) const {
  const uint8_t* s = c.at<const uint8_t>(src) + c0;
  uint8_t* d = c.at<uint8_t>(dst);
  const size_t w = c1 - c0;
  for (size_t r = 0; r < rows; ++r) std::memcpy(d + r * w, s + r * C, w);
  return true;
}

bool PackStep::store_tile(Context& c, size_t m0, size_t m1, size_t n0, size_t n1) const {
  const size_t g = size_t(group);
  const size_t bytes = n1 == K ? out_stride - n0 / g : (n1 - n0) / g;  // the last tile zeroes the row tail
  return pack_groups_block(c.at<const uint8_t>(src) + m0 * K + n0, K, m1 - m0, n1 - n0, bits, group, shift,
                           c.at<uint8_t>(dst) + m0 * out_stride + n0 / g, out_stride, bytes, tier);
}

void PackStep::write_pad_rows(Context& c) const {
  if (pad_rows == 0) return;
  uint8_t* first = c.at<uint8_t>(dst) + M * out_stride;
  pack_groups_serial(pad_codes.data(), 1, K, bits, group, shift, first, out_stride, tier);
  for (size_t r = 1; r < pad_rows; ++r) std::memcpy(first + r * out_stride, first, out_stride);
}

bool PackStep::run(Context& c) const {
  const uint8_t* codes = c.at<const uint8_t>(src);
  uint8_t* out = c.at<uint8_t>(dst);
  switch (kind) {
    case Kind::groups: {
      if (!pack_groups(codes, M, K, bits, group, shift, out, out_stride, tier)) return false;
      write_pad_rows(c);
      return true;
    }
    case Kind::dotgemm: {
      int16_t* o = reinterpret_cast<int16_t*>(out);
      const int rc = dotgemm_pack_activations(codes, M, K, bits, levels16.data(), o, out_stride, int(tier));
      std::fill(o + M * out_stride, o + (M + pad_rows) * out_stride, int16_t(0));
      return rc == 1;
    }
    case Kind::dot8: {
      const int rc = dot8_pack_activations(codes, M, K, bits, levels8.data(), out, out_stride, int(tier));
      for (size_t r = M; r < M + pad_rows; ++r) {  // the all-padding pixel
        std::memset(out + r * out_stride, levels8[size_t(pad_code)], K);
        std::memset(out + r * out_stride + K, 0, out_stride - K);
      }
      return rc == 1;
    }
    case Kind::bitplanes: {
      uint8_t* plane_codes_buf = c.at<uint8_t>(plane_codes);
      uint8_t* plane_buf = c.at<uint8_t>(plane_out);
      std::memset(out, 0, M * out_stride);
      for (int b = 0; b < bits; ++b) {
        const uint8_t* src_plane = codes;
        if (bits > 1) {
          for (size_t i = 0; i < M * K; ++i) plane_codes_buf[i] = uint8_t((codes[i] >> b) & 1);
          src_plane = plane_codes_buf;
        }
        if (!pack_groups(src_plane, M, K, 1, 8, 0, plane_buf, plane, tier)) return false;
        for (size_t m = 0; m < M; ++m) std::memcpy(out + m * out_stride + size_t(b) * plane, plane_buf + m * plane, plane);
      }
      if (bits > 1) {  // the shifted planes hide codes >= 2^bits: check them once
        for (size_t i = 0; i < M * K; ++i)
          if (codes[i] >> bits) return false;
      }
      return true;
    }
  }
  return false;
}

void GemmStep::prepare(Context& c) const {
  if (offsets.empty()) return;
  std::vector<const uint8_t*>& ind = c.indirection[index];
  const uint8_t* base = c.at<const uint8_t>(a);
  ind.resize(offsets.size());
  for (size_t i = 0; i < offsets.size(); ++i) ind[i] = base + offsets[i];
}

bool GemmStep::run(Context& c) const {
  GemmCall call;
  call.kernel = kernel;
  call.w = w;
  call.tables = tables;
  call.M = M;
  call.N = N;
  call.k_steps = k_steps;
  call.flush8 = flush8;
  call.flush16 = flush16;
  call.correction = correction;
  call.col_correction = col_correction;
  call.a_code_shift = a_code_shift;
  if (offsets.empty()) {
    call.a = c.at<const uint8_t>(a);
    call.a_stride = a_stride;
  } else {
    call.a = nullptr;
    call.a_ind = c.indirection[index].data();
    call.a_ind_stride = segs;
    call.seg_steps = seg_steps;
  }
  FusedPack pack;
  if (codes >= 0) {
    pack.codes = c.at<const uint8_t>(codes);
    pack.out = c.at<uint8_t>(a);
    pack.K = K;
    pack.bits = bits;
    pack.group = group;
    pack.shift = int(a_code_shift);
    pack.tier = kernel->tier;
    call.pack = &pack;
  }
  struct GatherCtx {
    const Im2colStep* step;
    Context* context;
  } gather_ctx{gather.get(), &c};
  if (gather) {
    pack.out = c.at<uint8_t>(a);
    pack.rows = [](const void* ctx, size_t m0, size_t m1) {
      const GatherCtx& gc = *static_cast<const GatherCtx*>(ctx);
      gc.step->gather_rows(*gc.context, m0, m1);
      return true;
    };
    pack.rows_ctx = &gather_ctx;
    call.pack = &pack;
  }
  call.epilogue = ep.make(c);
  if (ep.kind == OutKind::int32) {
    call.c = static_cast<int32_t*>(call.epilogue.out);
    call.c_stride = ep.out_stride;
  }
  struct StoreCtx {
    const PackStep* step;
    Context* context;
    std::atomic<bool> bad{false};
  } store_ctx{store.get(), &c};
  if (store) {
    call.after_tile = [](void* ctx, size_t m0, size_t m1, size_t n0, size_t n1) {
      StoreCtx& sc = *static_cast<StoreCtx*>(ctx);
      if (!sc.step->store_tile(*sc.context, m0, m1, n0, n1)) sc.bad.store(true, std::memory_order_relaxed);
    };
    call.after_tile_ctx = &store_ctx;
  }
  run_gemm(call, geometry);
  if (store) store->write_pad_rows(c);
  return !(codes >= 0 && pack.bad.load()) && !store_ctx.bad.load();
}

bool PadCorrectionStep::run(Context& c) const {
  int32_t* sums = c.at<int32_t>(acc);
  for (size_t m = 0; m < M; ++m) {
    const uint8_t* row = padded.data() + m * taps;
    int32_t* out = sums + m * N;
    for (size_t t = 0; t < taps; ++t) {
      if (!row[t]) continue;
      const int64_t* corr = table.data() + t * N;
      for (size_t n = 0; n < N; ++n) out[n] = int32_t(uint32_t(out[n]) - uint32_t(uint64_t(corr[n])));
    }
  }
  apply_epilogue(ep.make(c), sums, N, 0, M, 0, N);
  return true;
}

bool DwconvStep::run(Context& c) const {
  DwconvCall k = call;
  k.x = c.at<const uint8_t>(src);
  k.epilogue = ep.make(c);
  return run_dwconv(k);
}

bool GroupedConvStep::run(Context& c) const {
  GroupedConvCall k = call;
  k.x = c.at<const uint8_t>(src);
  k.epilogue = ep.make(c);
  return run_grouped_conv(k, gg);
}

bool FloatConvStep::run(Context& c) const {
  conv->run(c.at<const float>(src), g, c.at<float>(dst), simd);
  return true;
}

bool ExactFloatFixStep::run(Context& c) const {
  fix_float_quantize_ties(*spec, c.at<const float>(x), g, c.at<const float>(y), c.at<uint8_t>(codes), simd);
  return true;
}

bool ConcatStep::run(Context& c) const {
  size_t out_row = 0;
  for (size_t w : row_bytes) out_row += w;
  uint8_t* out = c.at<uint8_t>(dst);
  size_t col = 0;
  for (size_t i = 0; i < srcs.size(); ++i) {
    const uint8_t* s = c.at<const uint8_t>(srcs[i]);
    const size_t w = row_bytes[i];
    for (size_t r = 0; r < rows; ++r) std::memcpy(out + r * out_row + col, s + r * w, w);
    col += w;
  }
  return true;
}

bool PadStep::run(Context& c) const {
  const size_t OW = left + W + right, OH = top + H + bottom;
  const size_t in_row = W * C * elem, out_row = OW * C * elem;
  // one output row of fill, copied wherever the frame is
  std::vector<uint8_t> frame(out_row);
  for (size_t i = 0; i < out_row; i += elem) std::memcpy(frame.data() + i, fill, elem);
  const uint8_t* x = c.at<const uint8_t>(src);
  uint8_t* out = c.at<uint8_t>(dst);
  for (size_t b = 0; b < B; ++b)
    for (size_t oy = 0; oy < OH; ++oy) {
      uint8_t* o = out + (b * OH + oy) * out_row;
      if (oy < top || oy >= top + H) {
        std::memcpy(o, frame.data(), out_row);
        continue;
      }
      std::memcpy(o, frame.data(), left * C * elem);
      std::memcpy(o + left * C * elem, x + (b * H + oy - top) * in_row, in_row);
      std::memcpy(o + left * C * elem + in_row, frame.data(), right * C * elem);
    }
  return true;
}

}  // namespace runtime
}  // namespace lowbit
