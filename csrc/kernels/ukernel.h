// The one microkernel interface every GEMM kernel family implements, and the
// registry entry that describes a kernel to dispatch, tests and benchmarks.
#pragma once
#include <cstddef>
#include <cstdint>

#include "core/cpu_features.h"

namespace lowbit {

// One call computes an mr x nr block of raw int32 sums over the family's padded
// K and WRITES (does not accumulate) them to c: nr <= NR columns and any number
// of rows (the kernel walks them MR at a time, so its constants are set up
// once per call). Family-specific corrections (padding, zero points) are
// applied by the op driver afterwards.
struct UKernelArgs {
  const uint8_t* a;      // packed activations, first row of the tile
  size_t a_stride;       // bytes between packed activation rows
  const uint8_t* w;      // kernel-layout weights for this n-tile
  size_t w_stride;       // family-specific (bytes between weight rows or groups)
  size_t k_steps;        // K in the family's step unit (see each family header)
  const int8_t* tables;  // family-specific lookup tables
  int32_t* c;            // output tile, row-major
  size_t c_stride;       // int32 elements between output rows
  size_t mr, nr;         // rows (>= 1, any count) and columns (1 <= nr <= NR)
  uint32_t flush8;       // steps an 8-bit accumulator may take before widening
  uint32_t flush16;      // widenings a 16-bit accumulator may take before int32
  // Indirect activations (convolution without an im2col copy), for kernels
  // with KernelInfo::indirect: when a_ind is not null, K is made of segments
  // of seg_steps steps; row m's segment s starts at a_ind[m * a_ind_stride + s]
  // (a and a_stride are then unused).
  const uint8_t* const* a_ind;
  size_t a_ind_stride;
  size_t seg_steps;
  // grouplut: activation bytes hold the group code << a_code_shift (0, or 2
  // when codes are < 64, so that table address = tables + byte * 8).
  uint32_t a_code_shift;
  // Kernels registered with KernelInfo::subtracts_correction subtract this
  // (mod 2^32) from every sum they store; the driver passes 0 to the others
  // and subtracts the correction itself.
  int32_t correction;
};

using UKernelFn = void (*)(const UKernelArgs&);

// How a family's table entries are stored.
enum class TableKind : int {
  i8 = 0,     // one int8 table; the family checks its entries (and sums) fit
  split = 1,  // int16 entries as a low uint8 table and a high int8 table
  // No table and no narrow accumulator: the kernel computes every plan of its
  // family exactly (dot8's VNNI kernel and scalar twin, which need no int16
  // bound on the levels); dispatch also uses it for the family's i8 plans.
  i32 = 2,
};

struct KernelInfo {
  const char* name;    // <op>_<tile>__<tier>; the tier token is always last
  const char* family;  // "lutgemm", "grouplut", "dotgemm"
  int w_bits, a_bits;  // 0 = any (the family handles several widths)
  Tier tier;
  int mr, nr;          // tile size in outputs
  TableKind table_kind;
  UKernelFn fn;
  const char* description;
  bool indirect;       // accepts UKernelArgs::a_ind
  int layout;          // family-specific weight layout variant (0 = the family default)
  bool subtracts_correction;  // applies UKernelArgs::correction while storing
};

// The registry: every kernel built into this binary, scalar first.
const KernelInfo* kernel_registry(size_t* count);

namespace {  // internal linkage: each ISA translation unit gets its own copy

// Calls tile(q) for consecutive blocks of at most `MR` rows of p, with q's
// activation and output pointers moved to the block.
template <class Tile>
inline void for_row_blocks(const UKernelArgs& p, size_t MR, Tile&& tile) {
  UKernelArgs q = p;
  for (size_t m = 0; m < p.mr; m += MR) {
    q.mr = p.mr - m < MR ? p.mr - m : MR;
    if (p.a) q.a = p.a + m * p.a_stride;
    if (p.a_ind) q.a_ind = p.a_ind + m * p.a_ind_stride;
    q.c = p.c + m * p.c_stride;
    tile(q);
  }
}

// Walks the activation bytes (one per K step) of MR consecutive rows, direct
// or through the indirection buffer of a convolution, where K is made of
// segments of seg_steps steps with their own start addresses.
template <int MR>
struct StepCursor {
  const UKernelArgs& p;
  const uint8_t* rows[MR] = {};
  size_t seg = 0, begin = 0, end = 0;

  explicit StepCursor(const UKernelArgs& args) : p(args) {}
  // Makes step s readable (entering its segment when s starts one) and
  // returns the end of the run [s, min(limit, segment end)) readable as is.
  size_t run(size_t s, size_t limit) {
    if (s == end) {
      const size_t steps = p.a_ind ? p.seg_steps : p.k_steps;
      for (int m = 0; m < MR; ++m)
        rows[m] = p.a_ind ? p.a_ind[size_t(m) * p.a_ind_stride + seg] : p.a + size_t(m) * p.a_stride;
      begin = s;
      end = s + steps;
      ++seg;
    }
    return limit < end ? limit : end;
  }
  uint8_t code(int m, size_t s) const { return rows[m][s - begin]; }
};

}  // namespace
}  // namespace lowbit
