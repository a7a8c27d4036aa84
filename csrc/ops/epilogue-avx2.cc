// AVX2 twin of the epilogue (ops/epilogue.h): the same float32 operations in
// the same order, 8 outputs at a time; code outputs near a rounding boundary
// (tie_bound, the same float32 test) are rewritten by exact_code, as the scalar
// epilogue does. The clamps are vmaxps(lo, v) and
// vminps(hi, v): vmaxps(a, b) returns a > b ? a : b (b when either is NaN or
// both are zeros), which is exactly the scalar `v < lo ? lo : v` (signed
// zeros and NaN too); likewise vminps(hi, v) = `v > hi ? hi : v`.
#include <immintrin.h>

#include "ops/epilogue.h"

namespace lowbit {

namespace {

// The epilogue of one row (kResidual: the row has a residual), its parameters read
// once into locals: through the uint8_t stores of codes the compiler would
// otherwise reload the Epilogue's fields every 8 outputs.
template <bool kResidual>
struct RowEpilogue {
  __m256 lo, hi, inv, qlo, qhi, bound_scale, bound_offset, sign, half;
  __m256i qmin;
  const float* scale;
  const float* bias;
  const float* res;

  RowEpilogue(const Epilogue& e, const float* residual_row, const TieBound& b)
      : lo(_mm256_set1_ps(e.clamp_lo)), hi(_mm256_set1_ps(e.clamp_hi)), inv(_mm256_set1_ps(e.inv_step)),
        qlo(_mm256_set1_ps(float(e.qmin))), qhi(_mm256_set1_ps(float(e.qmax))),
        bound_scale(_mm256_set1_ps(b.scale)), bound_offset(_mm256_set1_ps(b.offset)), sign(_mm256_set1_ps(-0.0f)),
        half(_mm256_set1_ps(0.5f)), qmin(_mm256_set1_epi32(e.qmin)), scale(e.scale), bias(e.bias),
        res(residual_row) {}

  __m256 abs(__m256 x) const { return _mm256_andnot_ps(sign, x); }

  // Outputs n .. n + 7 as float32 (v); with `magnitude`, also |p| + |bias| + |residual|
  // (the magnitude of the tie bound, in the scalar epilogue's order)
  __m256 value(const int32_t* acc, size_t n, __m256* magnitude = nullptr) const {
    const __m256 p = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(acc))),
                                   _mm256_loadu_ps(scale + n));
    const __m256 b = _mm256_loadu_ps(bias + n);
    __m256 v = _mm256_add_ps(p, b);
    if (magnitude) *magnitude = _mm256_add_ps(abs(p), abs(b));
    if (kResidual) {
      const __m256 r = _mm256_loadu_ps(res + n);
      v = _mm256_add_ps(v, r);
      if (magnitude) *magnitude = _mm256_add_ps(*magnitude, abs(r));
    }
    v = _mm256_max_ps(lo, v);  // lo > v ? lo : v, i.e. exactly v < lo ? lo : v (NaN, signed zeros)
    return _mm256_min_ps(hi, v);  // hi < v ? hi : v
  }

  // Outputs n .. n + 7 as codes 0 .. 255 in int32 lanes, and in `ties` (bit j: lane j)
  // the lanes whose code the tie bound (epilogue.cc) cannot vouch for, which
  // exact_code decides: the scalar epilogue's float32 operations in its order.
  __m256i code(const int32_t* acc, size_t n, int* ties) const {
    __m256 magnitude;
    const __m256 t = _mm256_mul_ps(value(acc, n, &magnitude), inv);
    __m256 tc = _mm256_max_ps(qlo, t);  // t < qmin ? qmin : t (a NaN t passes)
    tc = _mm256_min_ps(qhi, tc);
    const __m256 q = _mm256_round_ps(tc, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    // one fused multiply-add: delta is a bound, not a value the codes are computed from, and
    // the FMA's single rounding keeps it within the derivation's margin (epilogue.cc)
    const __m256 delta = _mm256_fmadd_ps(magnitude, bound_scale, bound_offset);
    const __m256 dist = _mm256_sub_ps(half, abs(_mm256_sub_ps(tc, q)));
    *ties = ~_mm256_movemask_ps(_mm256_cmp_ps(dist, delta, _CMP_GT_OQ)) & 0xff;  // NaN: a tie
    // a NaN lane's code here is garbage, rewritten by fix_ties
    return _mm256_sub_epi32(_mm256_cvttps_epi32(q), qmin);
  }
};

// Columns [n0, nvec) of row m (nvec - n0 a multiple of 8); row[n - n0] is column n's sum.
template <bool kResidual>
void float_row(const Epilogue& e, const int32_t* row, const float* res, size_t m, size_t n0, size_t nvec) {
  const RowEpilogue<kResidual> r(e, res, TieBound{});
  float* const out = static_cast<float*>(e.out) + m * e.out_stride;
  for (size_t n = n0; n < nvec; n += 8) _mm256_storeu_ps(out + n, r.value(row + (n - n0), n));
  // the second output: the standalone quantizer on the row just written (still in L1)
  if (e.codes && n0 < nvec)
    quantize_codes__avx2(out + n0, nvec - n0, e.codes_step, e.codes_qn, e.codes_qp, e.codes + m * e.codes_stride + n0);
}

// Rewrites the codes of the near-tie lanes (bits of `ties`) of columns n .. n + 7 (rare).
void fix_ties(const Epilogue& e, const int32_t* acc, const float* res, uint8_t* out, size_t n, int ties) {
  for (; ties; ties &= ties - 1) {
    const int j = __builtin_ctz(unsigned(ties));
    out[n + j] = exact_code(e, acc[j], n + j, res ? res[n + j] : 0.0f);
  }
}

template <bool kResidual>
void codes_row(const Epilogue& e, const int32_t* row, const float* res, size_t m, size_t n0, size_t nvec,
               const TieBound& bound) {
  const RowEpilogue<kResidual> r(e, res, bound);
  uint8_t* const out = static_cast<uint8_t*>(e.out) + m * e.out_stride;
  size_t n = n0;
  // 32 codes a store: the packs interleave the 128-bit lanes (c0 c1 c2 c3 lo | hi), the permute restores order
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  for (; n + 32 <= nvec; n += 32) {
    const int32_t* a = row + (n - n0);
    int t0, t1, t2, t3;
    const __m256i c01 = _mm256_packs_epi32(r.code(a, n, &t0), r.code(a + 8, n + 8, &t1));
    const __m256i c23 = _mm256_packs_epi32(r.code(a + 16, n + 16, &t2), r.code(a + 24, n + 24, &t3));
    const __m256i bytes = _mm256_permutevar8x32_epi32(_mm256_packus_epi16(c01, c23), order);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + n), bytes);
    if (__builtin_expect((t0 | t1 | t2 | t3) != 0, 0)) {
      fix_ties(e, a, res, out, n, t0);
      fix_ties(e, a + 8, res, out, n + 8, t1);
      fix_ties(e, a + 16, res, out, n + 16, t2);
      fix_ties(e, a + 24, res, out, n + 24, t3);
    }
  }
  for (; n < nvec; n += 8) {
    int ties;
    const __m256i c = r.code(row + (n - n0), n, &ties);
    const __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(c), _mm256_extracti128_si256(c, 1));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(out + n), _mm_packus_epi16(w, w));
    if (__builtin_expect(ties != 0, 0)) fix_ties(e, row + (n - n0), res, out, n, ties);
  }
}

}  // namespace

void apply_epilogue__avx2(const Epilogue& e, const int32_t* acc, size_t acc_stride, size_t m0, size_t m1, size_t n0,
                          size_t n1) {
  const size_t nvec = n0 + (n1 - n0) / 8 * 8;
  const bool codes = e.kind != OutKind::float32;  // anything else writes codes, as the scalar twin
  const TieBound bound = codes ? tie_bound(e) : TieBound{};
  for (size_t m = m0; m < m1; ++m) {
    const int32_t* row = acc + (m - m0) * acc_stride;  // row[n - n0] for n in [n0, n1)
    const float* res = e.residual ? e.residual + m * e.residual_stride : nullptr;
    if (codes)
      res ? codes_row<true>(e, row, res, m, n0, nvec, bound) : codes_row<false>(e, row, res, m, n0, nvec, bound);
    else
      res ? float_row<true>(e, row, res, m, n0, nvec) : float_row<false>(e, row, res, m, n0, nvec);
    if (nvec < n1) apply_epilogue__scalar(e, row + (nvec - n0), acc_stride, m, m + 1, nvec, n1);
  }
}

// The scalar rule's clamps `q < lo ? lo : q` and `q > hi ? hi : q` are
// vmaxps(lo, q) and vminps(hi, q) (a NaN q passes through both, as above);
// (q + 1.5 * 2^23) - 1.5 * 2^23 on the clamped q (|q| <= 255) is roundps to
// nearest even; a NaN then gives code 0.
void quantize_codes__avx2(const float* x, size_t n, float step, int32_t qn, int32_t qp, uint8_t* out) {
  const __m256 div = _mm256_set1_ps(step), lo = _mm256_set1_ps(float(qn)), hi = _mm256_set1_ps(float(qp));
  const __m256i offset = _mm256_set1_epi32(qn);
  const size_t nvec = n / 8 * 8;
  for (size_t i = 0; i < nvec; i += 8) {
    __m256 q = _mm256_div_ps(_mm256_loadu_ps(x + i), div);
    q = _mm256_max_ps(lo, q);
    q = _mm256_min_ps(hi, q);
    q = _mm256_round_ps(q, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    q = _mm256_blendv_ps(q, lo, _mm256_cmp_ps(q, q, _CMP_UNORD_Q));  // NaN -> code 0
    const __m256i c = _mm256_sub_epi32(_mm256_cvttps_epi32(q), offset);  // 0 .. 255
    const __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(c), _mm256_extracti128_si256(c, 1));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(out + i), _mm_packus_epi16(w, w));
  }
  if (nvec < n) quantize_codes__scalar(x + nvec, n - nvec, step, qn, qp, out + nvec);
}

}  // namespace lowbit
