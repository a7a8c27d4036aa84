#include "core/thread_pool.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__linux__)
#include <pthread.h>
#include <sched.h>
#include <unistd.h>
#endif

namespace lowbit {
namespace {

class Pool {
 public:
  explicit Pool(int nthreads) {
    for (int i = 1; i < nthreads; ++i) workers_.emplace_back([this] { worker_loop(); });
  }
  ~Pool() {
    {
      std::lock_guard<std::mutex> g(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
  }
  int size() const { return int(workers_.size()) + 1; }

  // Returns false (and runs nothing) when another caller holds the pool.
  bool try_run(size_t n, TaskFn fn, void* ctx) {
    std::unique_lock<std::mutex> busy(run_mu_, std::try_to_lock);
    if (!busy.owns_lock()) return false;
    {
      std::lock_guard<std::mutex> g(mu_);
      fn_ = fn;
      ctx_ = ctx;
      n_ = n;
      next_.store(0);
      pending_.store(int(workers_.size()));
      generation_.fetch_add(1, std::memory_order_release);  // publishes the job to spinning workers
    }
    cv_.notify_all();
    drain();
    // Workers usually finish within microseconds of us: spin briefly before sleeping.
    if (!spin_until([this] { return pending_.load(std::memory_order_acquire) == 0; })) {
      std::unique_lock<std::mutex> g(mu_);
      done_cv_.wait(g, [this] { return pending_.load() == 0; });
    }
    return true;
  }

 private:
  // Spins for up to ~50 microseconds; true as soon as cond() holds. Keeps the
  // wake-up latency between back-to-back parallel calls (a model's layers)
  // far below a futex wake-up, at the price of a short busy wait.
  template <class Cond>
  static bool spin_until(Cond cond) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::microseconds(50);
    for (int i = 0;; ++i) {
      if (cond()) return true;
#if defined(__x86_64__) || defined(__i386__)
      __builtin_ia32_pause();
#endif
      if ((i & 255) == 255 && std::chrono::steady_clock::now() > deadline) return false;
    }
  }
  void drain() {
    for (;;) {
      size_t i = next_.fetch_add(1);
      if (i >= n_) break;
      fn_(ctx_, i);
    }
  }
  void worker_loop() {
    uint64_t seen = 0;
    for (;;) {
      if (!spin_until([&] { return generation_.load(std::memory_order_acquire) != seen; })) {
        std::unique_lock<std::mutex> g(mu_);
        cv_.wait(g, [&] { return stop_ || generation_.load() != seen; });
        if (stop_) return;
      }
      {
        std::lock_guard<std::mutex> g(mu_);  // pairs with the caller's writes of fn_/ctx_/n_
        if (stop_) return;
        seen = generation_.load();
      }
      drain();
      if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        std::lock_guard<std::mutex> g(mu_);
        done_cv_.notify_one();
      }
    }
  }

  std::vector<std::thread> workers_;
  std::mutex run_mu_;  // one parallel_for at a time
  std::mutex mu_;
  std::condition_variable cv_, done_cv_;
  bool stop_ = false;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  TaskFn fn_ = nullptr;
  void* ctx_ = nullptr;
  size_t n_ = 0;
  std::atomic<size_t> next_{0};
};

std::mutex g_mu;  // guards g_pools / g_pid / g_requested
// One pool per requested size, never destroyed while the process lives: a
// caller on another thread may still be running in a pool when the size
// changes. Idle workers just sleep on a condition variable.
std::vector<Pool*> g_pools;
long g_pid = -1;
int g_requested = 0;  // 0: default

long current_pid() {
#if defined(__linux__)
  return long(getpid());
#else
  return 0;
#endif
}

#if defined(__linux__)
// Hold g_mu across fork so the child never inherits it locked.
void atfork_prepare() { g_mu.lock(); }
void atfork_parent() { g_mu.unlock(); }
void atfork_child() { g_mu.unlock(); }
struct AtForkRegistrar {
  AtForkRegistrar() { pthread_atfork(atfork_prepare, atfork_parent, atfork_child); }
} g_atfork;
#endif

// Returns this process's pool of `want` threads. After a fork the parent's
// pools are abandoned (their threads do not exist in the child) and leaked.
Pool* acquire_pool(int want) {
  std::lock_guard<std::mutex> g(g_mu);
  if (g_pid != current_pid()) {
    g_pools.clear();
    g_pid = current_pid();
  }
  if (g_pools.size() <= size_t(want)) g_pools.resize(size_t(want) + 1, nullptr);
  if (!g_pools[size_t(want)]) g_pools[size_t(want)] = new Pool(want);
  return g_pools[size_t(want)];
}

}  // namespace

int default_num_threads() {
#if defined(__linux__)
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    int n = CPU_COUNT(&set);
    if (n > 0) return n;
  }
#endif
  unsigned n = std::thread::hardware_concurrency();
  return n ? int(n) : 1;
}

int get_num_threads() {
  std::lock_guard<std::mutex> g(g_mu);
  return g_requested > 0 ? g_requested : default_num_threads();
}

void set_num_threads(int n) {
  std::lock_guard<std::mutex> g(g_mu);
  g_requested = n > 0 ? n : 0;
}

void parallel_for(size_t n, TaskFn fn, void* ctx) {
  const int want = get_num_threads();
  if (n <= 1 || want <= 1) {
    for (size_t i = 0; i < n; ++i) fn(ctx, i);
    return;
  }
  Pool* pool = acquire_pool(want);
  if (!pool->try_run(n, fn, ctx)) {
    for (size_t i = 0; i < n; ++i) fn(ctx, i);
  }
}

}  // namespace lowbit
