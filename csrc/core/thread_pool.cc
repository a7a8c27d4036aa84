#include "core/thread_pool.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
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

// How a job is shared between the caller and the workers.
//
// One atomic word, claim_, holds the job's epoch (high 32 bits) and the index
// of its next unclaimed task (low 32 bits). The caller publishes a job by
// writing its parameters (fn_, ctx_, n_) and the new epoch under mu_; a
// worker reads the epoch and the parameters under mu_ too, so it always holds
// one job's consistent snapshot. A thread claims task i of epoch e only by a
// compare-exchange from (e, i) to (e, i + 1) with i < n, so:
//  * every task runs exactly once, and only with its own job's parameters;
//  * a successful claim means job e still had unclaimed tasks, so its caller
//    is still waiting and fn/ctx are alive;
//  * a worker that wakes late (its job already fully claimed, or a newer job
//    published) fails the exchange and runs nothing: it never writes a
//    finished job's state, and the caller never waits for it.
// done_ counts the finished tasks of the current job; the caller returns once
// done_ == n, i.e. it waits only for tasks some thread actually claimed.
// (The epoch wraps after 2**32 jobs; a worker would have to stall between
// taking its snapshot and its exchange for exactly that many jobs to misclaim.)
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

  // Largest job one try_run takes (the task index has 32 bits).
  static constexpr size_t kMaxTasks = size_t(1) << 31;

  // Returns false (and runs nothing) when another caller holds the pool.
  // Requires 1 < n <= kMaxTasks.
  bool try_run(size_t n, TaskFn fn, void* ctx) {
    std::unique_lock<std::mutex> busy(run_mu_, std::try_to_lock);
    if (!busy.owns_lock()) return false;
    done_.store(0, std::memory_order_relaxed);  // every task of the previous job has been counted
    const uint64_t epoch = (claim_.load(std::memory_order_relaxed) >> 32) + 1;
    {
      // under mu_: workers snapshot (epoch, parameters) under it, and a worker
      // about to sleep cannot miss the new epoch
      std::lock_guard<std::mutex> g(mu_);
      fn_ = fn;
      ctx_ = ctx;
      n_ = n;
      claim_.store(epoch << 32, std::memory_order_release);
    }
    if (sleepers_.load(std::memory_order_relaxed) > 0) cv_.notify_all();
    const uint32_t e = uint32_t(epoch);
    size_t ran = 0;
    for (size_t i; claim(e, n, &i);) {
      fn(ctx, i);
      ++ran;
    }
    if (done_.fetch_add(ran, std::memory_order_acq_rel) + ran == n) return true;
    // Tasks claimed by workers are still running: they usually finish within
    // microseconds, so spin briefly before sleeping.
    if (!spin_until([&] { return done_.load(std::memory_order_acquire) == n; })) {
      std::unique_lock<std::mutex> g(mu_);
      done_cv_.wait(g, [&] { return done_.load(std::memory_order_acquire) == n; });
    }
    return true;
  }

 private:
  // Claims the next task of epoch e (< n) into *i; false when the job has no
  // unclaimed task left or is no longer current.
  bool claim(uint32_t e, size_t n, size_t* i) {
    uint64_t cur = claim_.load(std::memory_order_acquire);
    for (;;) {
      if (uint32_t(cur >> 32) != e || (cur & 0xffffffffu) >= n) return false;
      if (claim_.compare_exchange_weak(cur, cur + 1, std::memory_order_acq_rel, std::memory_order_acquire)) {
        *i = size_t(cur & 0xffffffffu);
        return true;
      }
    }
  }

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

  void worker_loop() {
    uint32_t seen = 0;  // the last epoch this worker took part in
    auto published = [&] { return uint32_t(claim_.load(std::memory_order_acquire) >> 32) != seen; };
    for (;;) {
      if (!spin_until(published)) {
        std::unique_lock<std::mutex> g(mu_);
        sleepers_.fetch_add(1, std::memory_order_relaxed);
        cv_.wait(g, [&] { return stop_ || published(); });
        sleepers_.fetch_sub(1, std::memory_order_relaxed);
        if (stop_) return;
      }
      uint32_t e;
      TaskFn fn;
      void* ctx;
      size_t n;
      {
        std::lock_guard<std::mutex> g(mu_);  // one job's consistent snapshot
        if (stop_) return;
        e = uint32_t(claim_.load(std::memory_order_relaxed) >> 32);
        fn = fn_;
        ctx = ctx_;
        n = n_;
      }
      seen = e;
      size_t ran = 0;
      for (size_t i; claim(e, n, &i);) {
        fn(ctx, i);
        ++ran;
      }
      // ran > 0 means the job was not finished before our first claim, so
      // done_ still counts this job's tasks.
      if (ran > 0 && done_.fetch_add(ran, std::memory_order_acq_rel) + ran == n) {
        std::lock_guard<std::mutex> g(mu_);  // the caller may be between its check and its wait
        done_cv_.notify_one();
      }
    }
  }

  std::vector<std::thread> workers_;
  std::mutex run_mu_;  // one parallel_for at a time
  std::mutex mu_;      // guards sleeping and waking (cv_, done_cv_, stop_)
  std::condition_variable cv_, done_cv_;
  bool stop_ = false;
  std::atomic<int> sleepers_{0};  // workers waiting on cv_ (notify only when some are)
  std::atomic<uint64_t> claim_{0};  // (epoch << 32) | next unclaimed task
  TaskFn fn_ = nullptr;  // the current job (guarded by mu_)
  void* ctx_ = nullptr;
  size_t n_ = 0;
  std::atomic<size_t> done_{0};  // finished tasks of the current job
};

std::mutex g_mu;  // guards g_pools
// One pool per requested size, never destroyed while the process lives: a
// caller on another thread may still be running in a pool when the size
// changes. Idle workers just sleep on a condition variable.
std::vector<Pool*> g_pools;
// get_num_threads()'s answer, cached (0: not computed yet). See the header.
std::atomic<int> g_threads{0};

#if defined(__linux__)
// Hold g_mu across fork so the child never inherits it locked. The child
// abandons (leaks) the parent's pools: their threads do not exist there.
void atfork_prepare() { g_mu.lock(); }
void atfork_parent() { g_mu.unlock(); }
void atfork_child() {
  g_pools.clear();
  g_mu.unlock();
}
struct AtForkRegistrar {
  AtForkRegistrar() { pthread_atfork(atfork_prepare, atfork_parent, atfork_child); }
} g_atfork;
#endif

// Returns this process's pool of `want` threads.
Pool* acquire_pool(int want) {
  std::lock_guard<std::mutex> g(g_mu);
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
  int n = g_threads.load(std::memory_order_relaxed);
  if (n == 0) {
    n = default_num_threads();
    int expected = 0;  // a concurrent set_num_threads wins
    if (!g_threads.compare_exchange_strong(expected, n, std::memory_order_relaxed)) n = expected;
  }
  return n;
}

void set_num_threads(int n) { g_threads.store(n > 0 ? n : default_num_threads(), std::memory_order_relaxed); }

void parallel_for(size_t n, TaskFn fn, void* ctx) {
  const int want = get_num_threads();
  if (n <= 1 || want <= 1) {
    for (size_t i = 0; i < n; ++i) fn(ctx, i);
    return;
  }
  Pool* pool = acquire_pool(want);
  for (size_t base = 0; base < n; base += Pool::kMaxTasks) {
    const size_t count = std::min(n - base, Pool::kMaxTasks);
    struct Shifted {
      TaskFn fn;
      void* ctx;
      size_t base;
    } shifted{fn, ctx, base};
    TaskFn run = base == 0 ? fn : [](void* c, size_t i) {
      const Shifted* s = static_cast<const Shifted*>(c);
      s->fn(s->ctx, s->base + i);
    };
    void* run_ctx = base == 0 ? ctx : static_cast<void*>(&shifted);
    if (count <= 1 || !pool->try_run(count, run, run_ctx)) {
      for (size_t i = 0; i < count; ++i) run(run_ctx, i);
    }
  }
}

}  // namespace lowbit
