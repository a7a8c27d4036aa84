#include "ops/gemm.h"

#include <algorithm>
#include <cstring>
#include <new>
#include <vector>

#include "core/thread_pool.h"
#include "kernels/dot8/dot8.h"
#include "kernels/dotgemm/dotgemm.h"
#include "kernels/grouplut/grouplut.h"
#include "kernels/grouplut6/grouplut6.h"
#include "kernels/bitserial/bitserial.h"
#include "kernels/lutgemm/lutgemm.h"
#include "ops/pack.h"

namespace lowbit {

bool gemm_geometry(const KernelInfo& k, size_t N, size_t k_steps, GemmGeometry* g, std::string* why) {
  const size_t n_tiles = (N + size_t(k.nr) - 1) / size_t(k.nr);
  const std::string family = k.family;
  if (family == "lutgemm") {
    g->a_row_bytes = k_steps * kLutgemmStepBytes;
    // one row per output channel; layout 1 stores 4 pre-masked planes per byte
    g->w_stride = k_steps * kLutgemmStepBytes * (k.layout == 1 ? 4 : 1);
    g->w_tile_stride = g->w_stride * size_t(k.nr);
    g->table_bytes = k.table_kind == TableKind::i8 ? 32 : 64;
  } else if (family == "grouplut") {
    g->a_row_bytes = k_steps;  // one byte per group
    g->w_stride = kGrouplutLanes;
    g->w_tile_stride = k_steps * size_t(k.nr);  // NR / 32 consecutive 32-channel blocks
    g->table_bytes = 256 * 32;
    g->w_bytes = (N + kGrouplutLanes - 1) / kGrouplutLanes * k_steps * kGrouplutLanes;
    return true;
  } else if (family == "grouplut6") {
    g->a_row_bytes = k_steps;  // one byte per group
    g->w_stride = kGrouplut6Lanes;
    g->w_tile_stride = k_steps * size_t(k.nr);  // NR / 64 consecutive 64-channel blocks
    g->table_bytes = 256 * 64;
    g->w_bytes = (N + kGrouplut6Lanes - 1) / kGrouplut6Lanes * k_steps * kGrouplut6Lanes;
    return true;
  } else if (family == "bitserial") {
    g->a_row_bytes = 2 * k_steps * kBitserialStepBytes;  // up to 2 activation planes
    g->w_stride = (k_steps + 1) * kBitserialStepBytes;    // plane + popcount trailer
    g->w_tile_stride = g->w_stride * size_t(k.nr);
    g->table_bytes = 32;
  } else if (family == "dotgemm") {
    g->a_row_bytes = k_steps * kDotgemmStepBytes;  // int16 level pairs
    g->w_stride = size_t(k.nr) * kDotgemmStepBytes;  // one k pair of NR channels
    g->w_tile_stride = k_steps * g->w_stride;
    g->table_bytes = 0;  // no tables
  } else if (family == "dot8") {
    g->a_row_bytes = k_steps * kDot8StepBytes;    // uint8 level quads
    g->w_stride = size_t(k.nr) * kDot8StepBytes;  // one k quad of NR channels
    g->w_tile_stride = k_steps * g->w_stride;
    g->table_bytes = 0;  // no tables
  } else {
    *why = "unknown kernel family '" + family + "'";
    return false;
  }
  g->w_bytes = n_tiles * g->w_tile_stride;
  return true;
}

namespace {

struct Task {
  const GemmCall* call;
  const GemmGeometry* g;
  size_t tm, tn;            // task size in rows / columns (multiples of MR / NR)
  size_t tasks_n;           // tasks along N
  bool pack_rows;           // each task packs its own rows first (tasks_n == 1)
  // set by a task whose scratch block could not be allocated (an exception
  // must not leave a pool thread); run_gemm then throws std::bad_alloc
  mutable std::atomic<bool> out_of_memory{false};
};

// Packs activation rows [m0, m1) of a fused-pack call into its `a` buffer.
void pack_rows(const GemmCall& c, size_t m0, size_t m1) {
  FusedPack& f = *c.pack;
  if (f.rows) {
    if (!f.rows(f.rows_ctx, m0, m1)) f.bad.store(true, std::memory_order_relaxed);
    return;
  }
  if (!pack_groups_serial(f.codes + m0 * f.K, m1 - m0, f.K, f.bits, f.group, f.shift,
                          f.out + m0 * c.a_stride, c.a_stride, f.tier))
    f.bad.store(true, std::memory_order_relaxed);
}

void run_task(void* ctx, size_t index) {
  const Task& t = *static_cast<const Task*>(ctx);
  const GemmCall& c = *t.call;
  const KernelInfo& k = *c.kernel;
  const size_t m0 = (index / t.tasks_n) * t.tm, n0 = (index % t.tasks_n) * t.tn;
  const size_t m1 = std::min(c.M, m0 + t.tm), n1 = std::min(c.N, n0 + t.tn);
  if (t.pack_rows) pack_rows(c, m0, m1);
  // With an epilogue the int32 sums of this task go to a per-thread scratch
  // block first; otherwise straight to the int32 output.
  const bool fused = c.epilogue.kind != OutKind::int32;
  thread_local std::vector<int32_t> scratch;
  int32_t* out = c.c;
  size_t out_stride = c.c_stride, om0 = 0, on0 = 0;
  if (fused) {
    try {
      scratch.resize(t.tm * t.tn);
    } catch (const std::bad_alloc&) {
      t.out_of_memory.store(true);
      return;
    }
    out = scratch.data();
    out_stride = t.tn;
    om0 = m0;
    on0 = n0;
  }
  UKernelArgs p;
  p.a_stride = c.a_stride;
  p.w_stride = t.g->w_stride;
  p.k_steps = c.k_steps;
  p.tables = c.tables;
  p.c_stride = out_stride;
  p.flush8 = c.flush8;
  p.flush16 = c.flush16;
  p.a_ind = nullptr;
  p.a_ind_stride = c.a_ind_stride;
  p.seg_steps = c.seg_steps;
  p.a_code_shift = c.a_code_shift;
  p.correction = k.subtracts_correction ? c.correction : 0;
  // One kernel call per N tile covers all rows of the task (the kernel walks
  // them MR at a time), so the weight tile is reused from cache by every row.
  for (size_t n = n0; n < n1; n += size_t(k.nr)) {
    p.w = c.w + (n / size_t(k.nr)) * t.g->w_tile_stride;
    p.nr = std::min(size_t(k.nr), n1 - n);
    p.a = c.a ? c.a + m0 * c.a_stride : nullptr;
    if (c.a_ind) p.a_ind = c.a_ind + m0 * c.a_ind_stride;
    p.c = out + (m0 - om0) * out_stride + (n - on0);
    p.mr = m1 - m0;
    k.fn(p);
  }
  if (c.correction != 0 && !k.subtracts_correction) {
    for (size_t m = m0; m < m1; ++m) {
      int32_t* row = out + (m - om0) * out_stride;
      for (size_t n = n0; n < n1; ++n) row[n - on0] = int32_t(uint32_t(row[n - on0]) - uint32_t(c.correction));
    }
  }
  if (c.col_correction) {
    for (size_t m = m0; m < m1; ++m) {
      int32_t* row = out + (m - om0) * out_stride;
      for (size_t n = n0; n < n1; ++n) row[n - on0] = int32_t(uint32_t(row[n - on0]) - uint32_t(c.col_correction[n]));
    }
  }
  if (fused) {
    apply_epilogue(c.epilogue, out, out_stride, m0, m1, n0, n1);
    if (c.after_tile) c.after_tile(c.after_tile_ctx, m0, m1, n0, n1);
  }
}

}  // namespace

void run_gemm(const GemmCall& call, const GemmGeometry& g) {
  if (call.M == 0 || call.N == 0) return;
  const KernelInfo& k = *call.kernel;
  Task t;
  t.call = &call;
  t.g = &g;
  // About 32 rows x 64 columns per task: kernels stream the weight tile
  // once per register tile of rows anyway, so taller tasks gain nothing,
  // while smaller ones balance the threads better at the end of a call
  // (measured: 2-thread scaling on the ResNet-18 3x3 layers 1.73-2.03x with
  // 32 rows vs 1.30-1.88x with 64, bench/bench_threads.py). Small layers are
  // cut finer (rows first, down to one register tile) until there are at
  // least 4 tasks per thread.
  const size_t mr = size_t(k.mr), nr = size_t(k.nr);
  if (gemm_runs_inline(call.M, call.N, call.k_steps)) {
    // A small problem: one task (all rows, packed first when fused, then
    // every N tile) on the calling thread; the pool is not even asked its size.
    t.tm = (call.M + mr - 1) / mr * mr;
    t.tn = (call.N + nr - 1) / nr * nr;
    t.tasks_n = 1;
    t.pack_rows = call.pack != nullptr;
    run_task(&t, 0);
    if (t.out_of_memory.load()) throw std::bad_alloc();
    return;
  }
  t.tm = std::max<size_t>(mr, 32 / mr * mr);
  t.tn = std::max<size_t>(nr, 64 / nr * nr);
  const size_t threads = size_t(get_num_threads());
  t.pack_rows = false;
  if (call.pack) {
    // Fused packing: a task owns whole rows (all of N) when there are enough
    // row blocks to balance the threads (>= 8 per thread); otherwise the
    // rows are packed first, in parallel, and the tasks split as usual.
    // Row blocks may shrink to two register tiles for that: a pack-first
    // call would end its packing with a barrier and hand each task rows that
    // the other thread packed (seen: ResNet-18 layer3, M = 196, 2-thread
    // scaling ~5% better fused with 8-row tasks, 1 thread unchanged).
    size_t fuse_tm = t.tm;
    while ((call.M + fuse_tm - 1) / fuse_tm < 8 * threads && fuse_tm / 2 >= 2 * mr)
      fuse_tm = std::max(mr, fuse_tm / 2 / mr * mr);
    if ((call.M + fuse_tm - 1) / fuse_tm >= 8 * threads) {
      t.pack_rows = true;
      t.tm = fuse_tm;
      t.tn = (call.N + nr - 1) / nr * nr;
    } else {
      FusedPack& f = *call.pack;
      if (f.rows ? !f.rows(f.rows_ctx, 0, call.M)
                 : !pack_groups(f.codes, call.M, f.K, f.bits, f.group, f.shift, f.out, call.a_stride, f.tier)) {
        f.bad.store(true);
        return;
      }
    }
  }
  const size_t want = 4 * threads;
  auto count = [&] { return ((call.M + t.tm - 1) / t.tm) * ((call.N + t.tn - 1) / t.tn); };
  while (count() < want && t.tm > mr) t.tm = std::max(mr, (t.tm / 2 + mr - 1) / mr * mr);
  while (count() < want && t.tn > nr) t.tn = std::max(nr, (t.tn / 2 + nr - 1) / nr * nr);
  t.tasks_n = (call.N + t.tn - 1) / t.tn;
  const size_t tasks_m = (call.M + t.tm - 1) / t.tm;
  parallel_for(tasks_m * t.tasks_n, run_task, &t);
  if (t.out_of_memory.load()) throw std::bad_alloc();
}

}  // namespace lowbit
