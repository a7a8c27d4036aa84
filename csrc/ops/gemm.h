// The GEMM op driver: splits an M x N output into tasks for the thread pool
// and runs a registry kernel on each tile, then applies the per-output
// correction (padding terms). Families differ only in the geometry below.
#pragma once
#include <cstddef>
#include <atomic>
#include <cstdint>
#include <string>

#include "kernels/ukernel.h"
#include "ops/epilogue.h"

namespace lowbit {

// Byte geometry a family's kernel layouts must have for (M, N, k_steps).
struct GemmGeometry {
  size_t a_row_bytes;    // bytes each packed activation row must provide
  size_t w_stride;       // UKernelArgs::w_stride
  size_t w_tile_stride;  // bytes between consecutive NR-tiles of weights
  size_t w_bytes;        // total bytes the weight layout must provide
  size_t table_bytes;    // bytes the table buffer must provide
};

// Returns false and sets *why for an unknown family.
bool gemm_geometry(const KernelInfo& k, size_t N, size_t k_steps, GemmGeometry* g, std::string* why);

// Activation packing fused into the GEMM (direct grouplut calls): the
// (M, K) codes are packed with the pack_groups rule (ops/pack.h) into the
// call's `a` buffer (M rows of a_stride bytes), each block of rows by the
// task that then multiplies it, so the packed rows are still in that core's
// cache. `bad` is set when a code is out of range (the output is then
// unspecified and the caller must raise).
//
// With `rows` set, the rows come from the caller's producer instead of the
// pack_groups rule: rows(rows_ctx, m0, m1) writes packed rows [m0, m1) into
// the `a` buffer (returns false on bad input); it may run on any pool thread,
// for disjoint row ranges at once.
struct FusedPack {
  const uint8_t* codes = nullptr;
  uint8_t* out = nullptr;  // the call's `a` buffer, writable
  size_t K = 0;
  int bits = 0, group = 0, shift = 0;
  Tier tier = Tier::scalar;
  bool (*rows)(const void* ctx, size_t m0, size_t m1) = nullptr;
  const void* rows_ctx = nullptr;
  std::atomic<bool> bad{false};
};

struct GemmCall {
  const KernelInfo* kernel;
  const uint8_t* a;
  size_t a_stride;  // >= geometry.a_row_bytes
  const uint8_t* w;
  const int8_t* tables;
  size_t M, N, k_steps;
  uint32_t flush8, flush16;
  int32_t correction;  // subtracted (mod 2^32) from every output
  // When set (N entries), col_correction[n] is also subtracted (mod 2^32)
  // from column n of every row, by the driver: a per-channel term (dot8 with
  // signed 8-bit activations stored as level + 128: 128 * sum_k w[n][k]).
  const int32_t* col_correction = nullptr;
  // Indirect activation rows (kernel must have KernelInfo::indirect): row m's
  // segment s is a_ind[m * a_ind_stride + s], seg_steps steps long.
  const uint8_t* const* a_ind = nullptr;
  size_t a_ind_stride = 0, seg_steps = 0;
  uint32_t a_code_shift = 0;  // UKernelArgs::a_code_shift
  FusedPack* pack = nullptr;  // when set, `a` is written by the driver first
  // int32 output (epilogue.kind == int32) or the fused epilogue's output.
  int32_t* c = nullptr;
  size_t c_stride = 0;
  Epilogue epilogue;
  // With a fused epilogue: called by each task right after its tile's
  // epilogue, after_tile(after_tile_ctx, m0, m1, n0, n1), when the outputs of
  // rows [m0, m1) x columns [n0, n1) are final and still in that core's cache
  // (the executor packs them there for the next layer's kernel). Tiles are
  // disjoint; it may run on any pool thread, for several tiles at once. n0 is
  // a multiple of the kernel's NR, and n1 too unless n1 == N.
  void (*after_tile)(void* ctx, size_t m0, size_t m1, size_t n0, size_t n1) = nullptr;
  void* after_tile_ctx = nullptr;
};

// Whether run_gemm runs an M x N x k_steps problem on the calling thread
// only. Below kGemmInlineWork output-steps (about 5 us of one core's work
// for grouplut on the AVX2 EPYC) a second thread saves less than waking the
// pool costs: microseconds on an idle machine, more on a loaded one where a
// woken worker may take a task and then lose its core (measured before the
// pool stopped waiting for idle workers to check in: a W2A2 8x64x128 GEMM,
// 3 us inline, 214 us with 2 threads on the 2-vCPU host under shared load;
// bench/bench_call_overhead.py).
constexpr size_t kGemmInlineWork = size_t(1) << 17;
inline bool gemm_runs_inline(size_t M, size_t N, size_t k_steps) { return M * N * k_steps < kGemmInlineWork; }

// Runs the whole GEMM (multi-threaded unless gemm_runs_inline). Inputs must already be validated
// against gemm_geometry(). Throws std::bad_alloc (on the calling thread)
// when a task's scratch memory cannot be allocated.
void run_gemm(const GemmCall& call, const GemmGeometry& g);

}  // namespace lowbit
