// Shared by the dot8 Arm kernels (one translation unit per tier, each built
// with its tier's -march): the walk over K and the tile's row dispatch.
// Internal linkage, so every unit gets its own copy compiled with its flags.
#pragma once
#include <arm_neon.h>

#include <algorithm>
#include <cstring>

#include "kernels/dot8/dot8.h"

namespace lowbit {
namespace {

// The activation quad of a row at `x` in all four 32-bit lanes.
inline uint8x16_t load_quad_dup(const uint8_t* x) {
  uint32_t quad;
  std::memcpy(&quad, x, 4);
  return vreinterpretq_u8_u32(vdupq_n_u32(quad));
}

// Walks K in runs of consecutive k quads: within one segment of the
// indirection buffer (convolution) and within one window of `window` steps.
// run(rows, w, steps) consumes `steps` quads (row m's at rows[m], weights at
// w, step_w bytes a step); flush() is called after every full window and at
// the end.
template <int MR, class Run, class Flush>
inline void for_quad_runs(const UKernelArgs& p, size_t step_w, size_t window, Run&& run, Flush&& flush) {
  const size_t S = p.k_steps;
  size_t since_flush = 0;
  for (size_t s = 0; s < S;) {
    const uint8_t* rows[MR];
    size_t end = S;
    if (p.a_ind) {
      const size_t seg = s / p.seg_steps, off = (s - seg * p.seg_steps) * kDot8StepBytes;
      for (int m = 0; m < MR; ++m) rows[m] = p.a_ind[size_t(m) * p.a_ind_stride + seg] + off;
      end = std::min(S, (seg + 1) * p.seg_steps);
    } else {
      for (int m = 0; m < MR; ++m) rows[m] = p.a + size_t(m) * p.a_stride + s * kDot8StepBytes;
    }
    end = std::min(end, s + (window - since_flush));
    run(rows, p.w + s * step_w, end - s);
    since_flush += end - s;
    s = end;
    if (since_flush == window || s == S) {
      flush();
      since_flush = 0;
    }
  }
}

// The activation quad of a row at `x` in lane 0, zeros elsewhere (a lone
// step for the lane-indexed dot products, lane 0).
inline uint8x16_t load_quad_lane0(const uint8_t* x) {
  uint32_t quad;
  std::memcpy(&quad, x, 4);
  return vreinterpretq_u8_u32(vsetq_lane_u32(quad, vdupq_n_u32(0), 0));
}

// Stores the first nr of the NR int32 sums of row m.
template <int NR>
inline void store_row(const UKernelArgs& p, int m, const int32_t* sums) {
  std::memcpy(p.c + size_t(m) * p.c_stride, sums, std::min(p.nr, size_t(NR)) * sizeof(int32_t));
}

// Calls Tile<mr> for blocks of up to 4 rows.
template <template <int> class Tile>
inline void by_row_blocks(const UKernelArgs& p) {
  for_row_blocks(p, 4, [](const UKernelArgs& q) {
    switch (q.mr) {
      case 1: return Tile<1>::run(q);
      case 2: return Tile<2>::run(q);
      case 3: return Tile<3>::run(q);
      default: return Tile<4>::run(q);
    }
  });
}

}  // namespace
}  // namespace lowbit
