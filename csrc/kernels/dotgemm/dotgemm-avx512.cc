// dotgemm, __avx512 tier (F/BW/VL/DQ, no VNNI): vpmaddwd zmm + vpaddd, 8 x 32
// tile (see dotgemm-avx512-common.h).
#include "kernels/dotgemm/dotgemm-avx512-common.h"

namespace lowbit {

void dotgemm_8x32__avx512(const UKernelArgs& p) { dotgemm_8x32<false>(p); }

}  // namespace lowbit
