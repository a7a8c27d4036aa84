// A small fork-safe thread pool for splitting GEMM tiles across cores.
//
// Contract:
//  * parallel_for(n, fn) runs fn(i) for every i in [0, n) exactly once and
//    returns when all calls finished. Work items must be independent, so the
//    result never depends on the thread count or on scheduling.
//  * Safe to call from several threads at once: a caller that finds the pool
//    busy runs its items inline on its own thread.
//  * After fork() the child never touches the parent's pool (its worker
//    threads do not exist there); the first call in the child builds a new one.
#pragma once
#include <cstddef>

namespace lowbit {

using TaskFn = void (*)(void* ctx, size_t index);

// Number of threads a parallel_for may use (>= 1). Default: the CPUs in this
// process's affinity mask.
int get_num_threads();
void set_num_threads(int n);
int default_num_threads();

void parallel_for(size_t n, TaskFn fn, void* ctx);

template <class F>
void parallel_for(size_t n, F& f) {
  parallel_for(n, [](void* c, size_t i) { (*static_cast<F*>(c))(i); }, &f);
}

}  // namespace lowbit
