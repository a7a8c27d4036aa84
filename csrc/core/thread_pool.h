// A small fork-safe thread pool for splitting GEMM tiles across cores.
//
// Contract:
//  * parallel_for(n, fn) runs fn(i) for every i in [0, n) exactly once and
//    returns when all calls finished. The caller takes tasks too, and waits
//    only for tasks a worker actually took: when it runs them all itself (a
//    tiny job, or workers slow to wake on a loaded machine) it returns at
//    once, without waiting for any worker to check in. Work items must be independent, so the
//    result never depends on the thread count or on scheduling.
//  * Safe to call from several threads at once: a caller that finds the pool
//    busy runs its items inline on its own thread.
//  * After fork() the child never touches the parent's pool (its worker
//    threads do not exist there); the first call in the child builds a new one.
#pragma once
#include <algorithm>
#include <cstddef>
#include <vector>

namespace lowbit {

using TaskFn = void (*)(void* ctx, size_t index);

// Number of threads a parallel_for may use (>= 1), cached: no system call.
// Default: the CPUs in this process's affinity mask, read at the first call
// and again by every set_num_threads(n <= 0); a later change of the mask
// (taskset, os.sched_setaffinity) is picked up by calling set_num_threads(0).
int get_num_threads();
// n > 0: use n threads; n <= 0: the default (re-reads the affinity mask).
void set_num_threads(int n);
// The CPUs in the affinity mask now (a system call; not cached).
int default_num_threads();

void parallel_for(size_t n, TaskFn fn, void* ctx);

template <class F>
void parallel_for(size_t n, F& f) {
  parallel_for(n, [](void* c, size_t i) { (*static_cast<F*>(c))(i); }, &f);
}

// Runs ok = rows(m0, m1) over row blocks of an M x K byte matrix in
// parallel (activation packers: rows are independent) and returns whether
// every block returned true. Blocks hold 64 Ki codes, or fewer (down to
// 16 Ki codes, or one row) so that every thread gets two.
template <class Rows>
bool parallel_row_blocks(size_t M, size_t K, Rows&& rows) {
  if (M == 0) return true;
  const size_t k1 = std::max<size_t>(K, 1), threads = size_t(get_num_threads());
  const size_t big = std::max<size_t>(1, (size_t(1) << 16) / k1), small = std::max<size_t>(1, (size_t(1) << 14) / k1);
  const size_t even = (M + 2 * threads - 1) / (2 * threads);
  const size_t block = std::min(big, std::max(small, even));
  const size_t tasks = (M + block - 1) / block;
  std::vector<char> ok(tasks, 1);
  auto task = [&](size_t i) {
    const size_t m0 = i * block;
    ok[i] = rows(m0, std::min(M, m0 + block)) ? 1 : 0;
  };
  parallel_for(tasks, task);
  return std::all_of(ok.begin(), ok.end(), [](char v) { return v != 0; });
}

}  // namespace lowbit
