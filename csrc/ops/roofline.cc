#include "ops/roofline.h"

#include "core/cpu_features.h"

namespace lowbit {

LookupRates measure_lookup_rates(double seconds) {
#if LOWBIT_HAVE_X86_KERNELS
  if (best_tier() >= Tier::avx2) return measure_lookup_rates__avx2(seconds);
#endif
  (void)seconds;
  return LookupRates{0, 0};
}

}  // namespace lowbit
