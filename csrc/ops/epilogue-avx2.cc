// AVX2 twin of the epilogue (ops/epilogue.h): the same float32 operations in
// the same order, 8 outputs at a time; code outputs take the fast path of
// CodeConstants with the same float32 values as the scalar fast_code, and the
// lanes its near-tie test cannot vouch for are rewritten by exact_code. The clamps
// are vmaxps(lo, v) and vminps(hi, v): vmaxps(a, b) returns a > b ? a : b (b
// when either is NaN or both are zeros), which is exactly the scalar
// `v < lo ? lo : v` (signed zeros and NaN too); likewise vminps(hi, v) =
// `v > hi ? hi : v`.
#include <immintrin.h>

#include "ops/epilogue.h"

namespace lowbit {

namespace {

// quantize_codes' rule 8 lanes at a time: the scalar rule's clamps `q < lo ? lo : q`
// and `q > hi ? hi : q` are vmaxps(lo, q) and vminps(hi, q) (a NaN q passes through
// both, as above); (q + 1.5 * 2^23) - 1.5 * 2^23 on the clamped q (|q| <= 255) is
// roundps to nearest even; a NaN then gives code 0.
struct QuantizeLanes {
  __m256 div, lo, hi;
  __m256i offset;
  QuantizeLanes(float step, int32_t qn, int32_t qp)
      : div(_mm256_set1_ps(step)), lo(_mm256_set1_ps(float(qn))), hi(_mm256_set1_ps(float(qp))),
        offset(_mm256_set1_epi32(qn)) {}

  // Codes of x[0 .. 8) stored to out[0 .. 8)
  void store(__m256 x, uint8_t* out) const {
    __m256 q = _mm256_div_ps(x, div);
    q = _mm256_max_ps(lo, q);
    q = _mm256_min_ps(hi, q);
    q = _mm256_round_ps(q, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    q = _mm256_blendv_ps(q, lo, _mm256_cmp_ps(q, q, _CMP_UNORD_Q));  // NaN -> code 0
    const __m256i c = _mm256_sub_epi32(_mm256_cvttps_epi32(q), offset);  // 0 .. 255
    const __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(c), _mm256_extracti128_si256(c, 1));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(out), _mm_packus_epi16(w, w));
  }
};

// The float epilogue (kResidual: with a residual), its parameters read once per call.
template <bool kResidual>
struct RowEpilogue {
  __m256 lo, hi;
  const float* scale;
  const float* bias;

  explicit RowEpilogue(const Epilogue& e)
      : lo(_mm256_set1_ps(e.clamp_lo)), hi(_mm256_set1_ps(e.clamp_hi)), scale(e.scale), bias(e.bias) {}

  // Outputs n .. n + 7 as float32 (res: the row's residual)
  __m256 value(const int32_t* acc, const float* res, size_t n) const {
    const __m256 p = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(acc))),
                                   _mm256_loadu_ps(scale + n));
    __m256 v = _mm256_add_ps(p, _mm256_loadu_ps(bias + n));
    if (kResidual) v = _mm256_add_ps(v, _mm256_loadu_ps(res + n));
    v = _mm256_max_ps(lo, v);  // lo > v ? lo : v, i.e. exactly v < lo ? lo : v (NaN, signed zeros)
    return _mm256_min_ps(hi, v);  // hi < v ? hi : v
  }
};

// The code fast path (CodeConstants; the scalar fast_code's float32 values), its
// parameters read once per call into locals: through the uint8_t stores of codes
// the compiler would otherwise reload them every 8 outputs.
template <bool kResidual>
struct RowCodes {
  __m256 lo, hi, residual_scale, residual_bound, slope, sign;
  const float* scale;
  const float* bias;
  const float* limit;

  // k0: column n's constants are k's at k0 + n
  RowCodes(const CodeConstants& k, size_t k0)
      : lo(_mm256_set1_ps(k.lo)), hi(_mm256_set1_ps(k.hi)), residual_scale(_mm256_set1_ps(k.residual_scale)),
        residual_bound(_mm256_set1_ps(k.residual_bound)), slope(_mm256_set1_ps(kTieSlope)),
        sign(_mm256_set1_ps(-0.0f)), scale(k.scale.data() + k0), bias(k.bias.data() + k0),
        limit(k.limit.data() + k0) {}

  __m256 abs(__m256 x) const { return _mm256_andnot_ps(sign, x); }

  // Outputs n .. n + 7 as codes 0 .. 255 in int32 lanes (res: the row's residual), and in
  // `ties` (bit j: lane j) the lanes whose code the test cannot vouch for, which exact_code decides.
  __m256i code(const int32_t* acc, const float* res, size_t n, int* ties) const {
    const __m256 a = _mm256_cvtepi32_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(acc)));
    __m256 t = _mm256_fmadd_ps(a, _mm256_loadu_ps(scale + n), _mm256_loadu_ps(bias + n));
    __m256 r;
    if (kResidual) {
      r = _mm256_loadu_ps(res + n);
      t = _mm256_fmadd_ps(r, residual_scale, t);
    }
    __m256 tc = _mm256_max_ps(lo, t);  // lo > t ? lo : t (a NaN t passes)
    tc = _mm256_min_ps(hi, tc);
    const __m256 q = _mm256_round_ps(tc, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);  // the code
    __m256 lim = _mm256_fnmadd_ps(tc, slope, _mm256_loadu_ps(limit + n));  // limit[n] - tc kTieSlope (tc >= 0)
    if (kResidual) lim = _mm256_fnmadd_ps(abs(r), residual_bound, lim);
    const __m256 trusted = _mm256_cmp_ps(abs(_mm256_sub_ps(tc, q)), lim, _CMP_LT_OQ);  // NaN: not trusted
    *ties = ~_mm256_movemask_ps(trusted) & 0xff;
    // an untrusted lane's code here may be garbage (NaN), rewritten by fix_ties
    return _mm256_cvttps_epi32(q);
  }
};

// Rows [m0, m1) x columns [n0, nvec) (nvec - n0 a multiple of 8); acc row m - m0 holds
// the sums of columns n0 .. of row m.
template <bool kResidual>
void float_rows(const Epilogue& e, const int32_t* acc, size_t acc_stride, size_t m0, size_t m1, size_t n0,
                size_t nvec) {
  const RowEpilogue<kResidual> r(e);
  const QuantizeLanes quantize(e.codes_step, e.codes_qn, e.codes_qp);  // the second output's
  for (size_t m = m0; m < m1; ++m) {
    const int32_t* row = acc + (m - m0) * acc_stride;  // row[n - n0]: column n
    const float* res = kResidual ? e.residual + m * e.residual_stride : nullptr;
    float* const out = static_cast<float*>(e.out) + m * e.out_stride;
    if (!e.codes) {
      for (size_t n = n0; n < nvec; n += 8) _mm256_storeu_ps(out + n, r.value(row + (n - n0), res, n));
      continue;
    }
    // the second output: the standalone quantizer's codes of the values just stored
    uint8_t* const codes = e.codes + m * e.codes_stride;
    for (size_t n = n0; n < nvec; n += 8) {
      const __m256 v = r.value(row + (n - n0), res, n);
      _mm256_storeu_ps(out + n, v);
      quantize.store(v, codes + n);
    }
  }
}

// Rewrites the codes of the near-tie lanes (bits of `ties`) of columns n .. n + 7 (rare).
void fix_ties(const Epilogue& e, const int32_t* acc, const float* res, uint8_t* out, size_t n, int ties) {
  for (; ties; ties &= ties - 1) {
    const int j = __builtin_ctz(unsigned(ties));
    out[n + j] = exact_code(e, acc[j], n + j, res ? res[n + j] : 0.0f);
  }
}

template <bool kResidual>
void codes_rows(const Epilogue& e, const CodeConstants& k, size_t k0, const int32_t* acc, size_t acc_stride,
                size_t m0, size_t m1, size_t n0, size_t nvec) {
  const RowCodes<kResidual> r(k, k0);
  // 32 codes a store: the packs interleave the 128-bit lanes (c0 c1 c2 c3 lo | hi), the permute restores order
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  for (size_t m = m0; m < m1; ++m) {
    const int32_t* row = acc + (m - m0) * acc_stride;  // row[n - n0]: column n
    const float* res = kResidual ? e.residual + m * e.residual_stride : nullptr;
    uint8_t* const out = static_cast<uint8_t*>(e.out) + m * e.out_stride;
    size_t n = n0;
    for (; n + 32 <= nvec; n += 32) {
      const int32_t* a = row + (n - n0);
      int t0, t1, t2, t3;
      const __m256i c01 = _mm256_packs_epi32(r.code(a, res, n, &t0), r.code(a + 8, res, n + 8, &t1));
      const __m256i c23 = _mm256_packs_epi32(r.code(a + 16, res, n + 16, &t2), r.code(a + 24, res, n + 24, &t3));
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
      const __m256i c = r.code(row + (n - n0), res, n, &ties);
      const __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(c), _mm256_extracti128_si256(c, 1));
      _mm_storel_epi64(reinterpret_cast<__m128i*>(out + n), _mm_packus_epi16(w, w));
      if (__builtin_expect(ties != 0, 0)) fix_ties(e, row + (n - n0), res, out, n, ties);
    }
  }
}

}  // namespace

void apply_epilogue__avx2(const Epilogue& e, const int32_t* acc, size_t acc_stride, size_t m0, size_t m1, size_t n0,
                          size_t n1) {
  const bool codes = e.kind != OutKind::float32;  // anything else writes codes, as the scalar twin
  CodeConstants local;
  const CodeConstants* k = e.fast;
  size_t k0 = e.fast_column;  // column n's constants: k0 + n
  if (codes && !k) k = &(local = code_constants(e, n1)), k0 = 0;
  if (codes && !k->usable) return apply_epilogue__scalar(e, acc, acc_stride, m0, m1, n0, n1);  // every code exact
  const size_t nvec = n0 + (n1 - n0) / 8 * 8;
  if (nvec > n0) {
    if (codes)
      e.residual ? codes_rows<true>(e, *k, k0, acc, acc_stride, m0, m1, n0, nvec)
                 : codes_rows<false>(e, *k, k0, acc, acc_stride, m0, m1, n0, nvec);
    else
      e.residual ? float_rows<true>(e, acc, acc_stride, m0, m1, n0, nvec)
                 : float_rows<false>(e, acc, acc_stride, m0, m1, n0, nvec);
  }
  if (nvec < n1) {  // the last n1 - nvec < 8 columns of every row
    Epilogue tail = e;
    tail.fast = k;  // the constants just made, not made again
    tail.fast_column = k0;
    apply_epilogue__scalar(tail, acc + (nvec - n0), acc_stride, m0, m1, nvec, n1);
  }
}

void quantize_codes__avx2(const float* x, size_t n, float step, int32_t qn, int32_t qp, uint8_t* out) {
  const QuantizeLanes quantize(step, qn, qp);
  const size_t nvec = n / 8 * 8;
  for (size_t i = 0; i < nvec; i += 8) quantize.store(_mm256_loadu_ps(x + i), out + i);
  if (nvec < n) quantize_codes__scalar(x + nvec, n - nvec, step, qn, qp, out + nvec);
}

}  // namespace lowbit
