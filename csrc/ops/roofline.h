// Measured limits of this CPU, for reporting kernels as a fraction of them.
#pragma once
#include <cstdint>

namespace lowbit {

struct LookupRates {
  double lookups_per_s;         // byte lookups/s: independent vpshufb (ymm) with no other work
  double lookup_add_per_s;      // byte lookups/s when every lookup is followed by its vpaddb
};

// Times tight AVX2 loops for about `seconds`; all zeros when AVX2 is absent.
LookupRates measure_lookup_rates(double seconds);
#if LOWBIT_HAVE_X86_KERNELS
LookupRates measure_lookup_rates__avx2(double seconds);
#endif

}  // namespace lowbit
