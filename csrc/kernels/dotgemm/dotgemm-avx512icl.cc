// dotgemm, __avx512icl tier: vpdpwssd zmm (AVX512-VNNI, int16 pairs -> int32,
// fused accumulate, non-saturating), 8 x 32 tile (see
// dotgemm-avx512-common.h). vpdpwssd rather than vpdpbusd: levels span
// [-128, 255], which is neither u8 nor s8 on both sides, and vpdpbusd would
// need an operand split plus a correction term; vpdpwssd is exact as is.
#include "kernels/dotgemm/dotgemm-avx512-common.h"

#if !LOWBIT_AVX512_VNNI
#error "dotgemm-avx512icl.cc must be compiled with the avx512icl flags (-mavx512vnni)"
#endif

namespace lowbit {

void dotgemm_8x32__avx512icl(const UKernelArgs& p) { dotgemm_8x32<true>(p); }

}  // namespace lowbit
