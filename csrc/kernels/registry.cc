// The kernel registry: every kernel compiled into this binary. Dispatch,
// tests, benchmarks and lowbit.kernels() all iterate this one table.
// Adding a kernel = one line here plus its family folder.
#include "kernels/dot8/dot8.h"
#include "kernels/dotgemm/dotgemm.h"
#include "kernels/grouplut/grouplut.h"
#include "kernels/grouplut6/grouplut6.h"
#include "kernels/bitserial/bitserial.h"
#include "kernels/lutgemm/lutgemm.h"

namespace lowbit {
namespace {

const KernelInfo kRegistry[] = {
    // name, family, w_bits, a_bits, tier, mr, nr, table kind, fn, description, indirect[, layout,
    // subtracts_correction]
    {"a2w2_lutgemm_1x1__scalar", "lutgemm", 2, 2, Tier::scalar, 1, 1, TableKind::i8, lutgemm_w2a2_i8__scalar,
     "DeepGEMM product LUT, scalar twin", false},
    {"a2w2_lutgemm16_1x1__scalar", "lutgemm", 2, 2, Tier::scalar, 1, 1, TableKind::split, lutgemm_w2a2_split__scalar,
     "DeepGEMM product LUT, int16 products as lo/hi byte tables, scalar twin", false},
    {"grouplut_1x32__scalar", "grouplut", 0, 0, Tier::scalar, 1, 32, TableKind::i8, grouplut__scalar,
     "activation-selected product-sum LUT, scalar twin", true, 0, true},
    {"grouplut6_1x64__scalar", "grouplut6", 0, 0, Tier::scalar, 1, 64, TableKind::i8, grouplut6__scalar,
     "activation-selected product-sum LUT, 64-entry tables, scalar twin", true, 0, true},
    {"a1w1_bitserial_1x1__scalar", "bitserial", 1, 0, Tier::scalar, 1, 1, TableKind::i8, bitserial__scalar,
     "AND + popcount over bit planes (W1 x A1/A2), scalar twin", false},
#if LOWBIT_HAVE_X86_KERNELS
    {"a2w2_lutgemm_1x4__avx2", "lutgemm", 2, 2, Tier::avx2, 1, 4, TableKind::i8, lutgemm_w2a2_i8__avx2,
     "DeepGEMM product LUT, vpshufb ymm, weights as 4 pre-masked planes", false, 1},
    {"a2w2_lutgemm16_2x2__avx2", "lutgemm", 2, 2, Tier::avx2, 2, 2, TableKind::split, lutgemm_w2a2_split__avx2,
     "DeepGEMM product LUT, lo/hi byte tables, vpshufb ymm", false},
    {"a2w2_lutgemm_4x2__avx512", "lutgemm", 2, 2, Tier::avx512, 4, 2, TableKind::i8, lutgemm_w2a2_i8__avx512,
     "DeepGEMM product LUT, vpshufb zmm + vpternlogd", false},
    {"a2w2_lutgemm_4x4__avx512icl", "lutgemm", 2, 2, Tier::avx512icl, 4, 4, TableKind::i8,
     lutgemm_w2a2_i8__avx512icl, "DeepGEMM product LUT, vpermb zmm + vpternlogd + vpdpbusd", false},
    {"a2w2_lutgemm16_4x2__avx512icl", "lutgemm", 2, 2, Tier::avx512icl, 4, 2, TableKind::split,
     lutgemm_w2a2_split__avx512icl, "DeepGEMM product LUT, lo/hi byte tables, vpermb zmm + vpdpbusd", false},
    {"grouplut_4x64__avx2", "grouplut", 0, 0, Tier::avx2, 4, 64, TableKind::i8, grouplut__avx2,
     "activation-selected product-sum LUT, vpshufb ymm, 4 rows x 64 channels", true, 0, true},
    // Within a family and tier, the first kernel listed is the one dispatch takes
    // (_dispatch.candidates); the others run when forced (lowbit.use(kernel=...)).
    {"grouplut6_4x128__avx512icl", "grouplut6", 0, 0, Tier::avx512icl, 4, 128, TableKind::i8,
     grouplut6_4x128__avx512icl,
     "activation-selected product-sum LUT, vpermb zmm on 64-entry tables, each table load shared by two "
     "64-channel blocks, vpmaddubsw widening, 4 rows x 128 channels",
     true, 0, true},
    {"grouplut6_4x64__avx512icl", "grouplut6", 0, 0, Tier::avx512icl, 4, 64, TableKind::i8, grouplut6__avx512icl,
     "activation-selected product-sum LUT, vpermb zmm on 64-entry tables, 4 rows x 64 channels", true},
    {"a1w1_bitserial_1x4__avx2", "bitserial", 1, 0, Tier::avx2, 1, 4, TableKind::i8, bitserial__avx2,
     "AND + popcount (vpshufb nibble table) over bit planes (W1 x A1/A2)", false},
    {"a1w1_bitserial_4x4__avx512icl", "bitserial", 1, 0, Tier::avx512icl, 4, 4, TableKind::i8,
     bitserial_4x4__avx512icl,
     "AND + vpopcntq over bit planes (W1 x A1/A2), 4 rows x 4 columns (2 x 4 for A2)", false},
    {"a1w1_bitserial_1x4__avx512icl", "bitserial", 1, 0, Tier::avx512icl, 1, 4, TableKind::i8,
     bitserial__avx512icl, "AND + vpopcntq over bit planes (W1 x A1/A2)", false},
#endif
#if LOWBIT_HAVE_ARM_KERNELS
    {"a2w2_lutgemm_1x4__neon", "lutgemm", 2, 2, Tier::neon, 1, 4, TableKind::i8, lutgemm_w2a2_i8__neon,
     "DeepGEMM product LUT, tbl on the two 16-entry tables, bsl-formed indices", false},
    {"grouplut_4x64__neon", "grouplut", 0, 0, Tier::neon, 4, 64, TableKind::i8, grouplut__neon,
     "activation-selected product-sum LUT, tbl (vqtbl1q_u8), 4 rows x 64 channels", true, 0, true},
    {"a1w1_bitserial_1x4__neon", "bitserial", 1, 0, Tier::neon, 1, 4, TableKind::i8, bitserial__neon,
     "AND + cnt over bit planes (W1 x A1/A2)", false},
#endif
    // ---- dot8: exact u8 x s8 byte dot products with int16 accumulators (small levels)
    {"dot8_1x16__scalar", "dot8", 0, 0, Tier::scalar, 1, 16, TableKind::i32, dot8__scalar,
     "uint8 x int8 levels, int32 dot products, scalar twin", true},
#if LOWBIT_HAVE_X86_KERNELS
    {"dot8_4x16__avx2", "dot8", 0, 0, Tier::avx2, 4, 16, TableKind::i8, dot8_4x16__avx2,
     "uint8 x int8 levels, vpmaddubsw + vpaddw into int16, widened every flush16 steps, 4 rows x 16 channels",
     true},
    {"dot8_8x32__avx512icl", "dot8", 0, 0, Tier::avx512icl, 8, 32, TableKind::i32, dot8_8x32__avx512icl,
     "uint8 x int8 levels, vpdpbusd zmm straight into int32 (any u8 x s8 levels), 8 rows x 32 channels", true},
#endif
#if LOWBIT_HAVE_ARM_KERNELS
    {"dot8_4x8__neon", "dot8", 0, 0, Tier::neon, 4, 8, TableKind::i8, dot8_4x8__neon,
     "uint8 x int8 levels, int16 mla widened by sadalp every 2*flush16 steps, 4 rows x 8 channels", true},
    {"dot8_4x16__neondot", "dot8", 0, 0, Tier::neondot, 4, 16, TableKind::i8, dot8_4x16__neondot,
     "uint8 x int8 levels, lane-indexed udot on weights biased by 128, minus 128 * activation sums, 4 rows x 16 channels", true},
    {"dot8_4x16__neoni8mm", "dot8", 0, 0, Tier::neoni8mm, 4, 16, TableKind::i8, dot8_4x16__neoni8mm,
     "uint8 x int8 levels, lane-indexed sudot into int32, 4 rows x 16 channels", true},
#endif
    // ---- dotgemm: exact int16 x int16 dot products (8-bit and wide codebooks)
    {"dotgemm_1x16__scalar", "dotgemm", 0, 0, Tier::scalar, 1, 16, TableKind::i8, dotgemm__scalar,
     "decoded int16 levels, int32 dot products, scalar twin", false},
#if LOWBIT_HAVE_X86_KERNELS
    {"dotgemm_6x16__avx2", "dotgemm", 0, 0, Tier::avx2, 6, 16, TableKind::i8, dotgemm_6x16__avx2,
     "decoded int16 levels, vpmaddwd + vpaddd ymm, 6 rows x 16 channels", false},
    {"dotgemm_8x32__avx512", "dotgemm", 0, 0, Tier::avx512, 8, 32, TableKind::i8, dotgemm_8x32__avx512,
     "decoded int16 levels, vpmaddwd + vpaddd zmm, 8 rows x 32 channels", false},
    {"dotgemm_8x32__avx512icl", "dotgemm", 0, 0, Tier::avx512icl, 8, 32, TableKind::i8, dotgemm_8x32__avx512icl,
     "decoded int16 levels, vpdpwssd zmm, 8 rows x 32 channels", false},
#endif
#if LOWBIT_HAVE_ARM_KERNELS
    {"dotgemm_4x8__neon", "dotgemm", 0, 0, Tier::neon, 4, 8, TableKind::i8, dotgemm_4x8__neon,
     "decoded int16 levels, smlal/smlal2 into int32, 4 rows x 8 channels", false},
#endif
};

}  // namespace

const KernelInfo* kernel_registry(size_t* count) {
  *count = sizeof(kRegistry) / sizeof(kRegistry[0]);
  return kRegistry;
}

}  // namespace lowbit
