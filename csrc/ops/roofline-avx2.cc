// Tight vpshufb loops: the machine's byte-lookup ceiling (no memory traffic,
// 8 independent chains so latency never limits).
#include <immintrin.h>

#include <chrono>

#include "ops/roofline.h"

namespace lowbit {
namespace {

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

LookupRates measure_lookup_rates__avx2(double seconds) {
  const __m256i table = _mm256_setr_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7,
                                         8, 9, 10, 11, 12, 13, 14, 15);
  LookupRates r{0, 0};
  const long iters = 1 << 20;
  {  // lookups only: each chain feeds its result back as the next index
    __m256i v[8];
    for (int i = 0; i < 8; ++i) v[i] = _mm256_set1_epi8(char(i));
    long done = 0;
    const double t0 = now();
    double t1 = t0;
    while (t1 - t0 < seconds) {
      for (long it = 0; it < iters; ++it) {
        for (int i = 0; i < 8; ++i) v[i] = _mm256_shuffle_epi8(table, v[i]);
        __asm__ volatile("" : "+x"(v[0]), "+x"(v[1]), "+x"(v[2]), "+x"(v[3]), "+x"(v[4]), "+x"(v[5]), "+x"(v[6]),
                         "+x"(v[7]));
      }
      done += iters;
      t1 = now();
    }
    r.lookups_per_s = double(done) * 8 * 32 / (t1 - t0);
  }
  {  // lookup + add: the inner step of every LUT kernel
    __m256i idx[4], acc[4];
    for (int i = 0; i < 4; ++i) {
      idx[i] = _mm256_set1_epi8(char(i));
      acc[i] = _mm256_setzero_si256();
    }
    long done = 0;
    const double t0 = now();
    double t1 = t0;
    while (t1 - t0 < seconds) {
      for (long it = 0; it < iters; ++it) {
        for (int i = 0; i < 4; ++i) acc[i] = _mm256_add_epi8(acc[i], _mm256_shuffle_epi8(table, idx[i]));
        __asm__ volatile("" : "+x"(acc[0]), "+x"(acc[1]), "+x"(acc[2]), "+x"(acc[3]), "+x"(idx[0]), "+x"(idx[1]),
                         "+x"(idx[2]), "+x"(idx[3]));
      }
      done += iters;
      t1 = now();
    }
    r.lookup_add_per_s = double(done) * 4 * 32 / (t1 - t0);
  }
  return r;
}

}  // namespace lowbit
