#include "runtime/executor.h"

#include "runtime/steps.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <new>
#include <stdexcept>
#include <utility>

namespace lowbit {
namespace runtime {

namespace {

constexpr size_t kAlign = 64;  // every arena buffer starts on a cache line

size_t round_up(size_t v, size_t m) { return (v + m - 1) / m * m; }

double now_seconds(bool thread_cpu) {
  if (thread_cpu) {
    timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
  }
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

int Plan::add_buffer(size_t bytes) {
  if (finalized_) throw std::logic_error("executor plan: add_buffer after finalize");
  Buffer b;
  b.bytes = bytes;
  buffers_.push_back(b);
  return int(buffers_.size() - 1);
}

int Plan::input_buffer(size_t bytes) {
  if (input_ >= 0) throw std::logic_error("executor plan: one input buffer only");
  input_ = add_buffer(bytes);
  buffers_[size_t(input_)].kind = BufferKind::input;
  return input_;
}

int Plan::output_buffer(size_t bytes) {
  if (output_ >= 0) throw std::logic_error("executor plan: one output buffer only");
  output_ = add_buffer(bytes);
  buffers_[size_t(output_)].kind = BufferKind::output;
  return output_;
}

void Plan::add_step(std::unique_ptr<Step> step) {
  if (finalized_) throw std::logic_error("executor plan: add_step after finalize");
  step->index = steps_.size();
  const int i = int(step->index);
  for (const std::vector<int>* ids : {&step->reads, &step->writes}) {
    for (int id : *ids) {
      if (id < 0 || size_t(id) >= buffers_.size()) throw std::out_of_range("executor plan: unknown buffer id");
      Buffer& b = buffers_[size_t(id)];
      if (b.first < 0) b.first = i;
      b.last = i;
    }
  }
  steps_.push_back(std::move(step));
}

Step* Plan::mutable_step(size_t i) {
  if (finalized_) throw std::logic_error("executor plan: mutable_step after finalize");
  return steps_.at(i).get();
}

void Plan::add_write(size_t i, int id) {
  if (finalized_) throw std::logic_error("executor plan: add_write after finalize");
  if (i >= steps_.size() || id < 0 || size_t(id) >= buffers_.size())
    throw std::out_of_range("executor plan: unknown step or buffer");
  Buffer& b = buffers_[size_t(id)];
  b.first = b.first < 0 ? int(i) : std::min(b.first, int(i));
  b.last = std::max(b.last, int(i));
  steps_[i]->writes.push_back(id);
}

void Plan::finalize(bool keep_all) {
  if (finalized_) return;
  if (keep_all)
    for (Buffer& b : buffers_)
      if (b.first >= 0) b.first = 0, b.last = int(steps_.size());
  // Greedy placement, largest first: each buffer goes to the lowest aligned
  // offset that overlaps no placed buffer whose life overlaps its own.
  std::vector<size_t> order;
  for (size_t i = 0; i < buffers_.size(); ++i)
    if (buffers_[i].kind == BufferKind::arena && buffers_[i].first >= 0) order.push_back(i);
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t x, size_t y) { return buffers_[x].bytes > buffers_[y].bytes; });
  std::vector<size_t> placed;
  size_t total = 0;
  for (size_t i : order) {
    Buffer& b = buffers_[i];
    const size_t size = round_up(std::max<size_t>(b.bytes, 1), kAlign);
    std::vector<std::pair<size_t, size_t>> busy;  // byte ranges of placed buffers alive at the same time
    for (size_t j : placed) {
      const Buffer& o = buffers_[j];
      if (o.first <= b.last && b.first <= o.last) busy.emplace_back(o.offset, o.offset + round_up(o.bytes, kAlign));
    }
    std::sort(busy.begin(), busy.end());
    size_t offset = 0;
    for (const auto& r : busy) {
      if (offset + size <= r.first) break;
      offset = std::max(offset, r.second);
    }
    b.offset = offset;
    total = std::max(total, offset + size);
    placed.push_back(i);
  }
  arena_bytes_ = total;
  finalized_ = true;
}

size_t Plan::total_buffer_bytes() const {
  size_t n = 0;
  for (const Buffer& b : buffers_)
    if (b.kind == BufferKind::arena) n += b.bytes;
  return n;
}

std::unique_ptr<Context> Plan::make_context() const {
  auto ctx = std::make_unique<Context>();
  void* mem = std::aligned_alloc(kAlign, round_up(std::max<size_t>(arena_bytes_, 1), kAlign));
  if (!mem) throw std::bad_alloc();
  ctx->arena = std::unique_ptr<uint8_t, void (*)(void*)>(static_cast<uint8_t*>(mem), std::free);
  ctx->ptr.resize(buffers_.size(), nullptr);
  for (size_t i = 0; i < buffers_.size(); ++i)
    if (buffers_[i].kind == BufferKind::arena) ctx->ptr[i] = ctx->arena.get() + buffers_[i].offset;
  ctx->indirection.resize(steps_.size());
  for (const auto& s : steps_) s->prepare(*ctx);
  return ctx;
}

std::unique_ptr<Context> Plan::acquire() {
  {
    std::lock_guard<std::mutex> lock(idle_mutex_);
    if (!idle_.empty()) {
      std::unique_ptr<Context> ctx = std::move(idle_.back());
      idle_.pop_back();
      return ctx;
    }
  }
  return make_context();  // every context is busy (or none made yet): a private one for this caller
}

void Plan::release(std::unique_ptr<Context> ctx) {
  std::lock_guard<std::mutex> lock(idle_mutex_);
  idle_.push_back(std::move(ctx));
}

bool Plan::first_step_checks_input() const {
  if (steps_.empty() || input_ < 0) return false;
  const auto* q = dynamic_cast<const QuantizeStep*>(steps_[0].get());
  return q && q->nchw && q->src == input_;
}

long Plan::run(const void* input, void* output, std::vector<double>* seconds, bool thread_cpu, bool check_finite,
               const std::vector<std::pair<int, void*>>* copy_out) {
  if (!finalized_) throw std::logic_error("executor plan: run before finalize");
  std::unique_ptr<Context> ctx = acquire();
  struct Return {  // hands the context back even when a step throws (std::bad_alloc)
    Plan* plan;
    std::unique_ptr<Context>& ctx;
    ~Return() { plan->release(std::move(ctx)); }
  } give_back{this, ctx};
  if (input_ >= 0) ctx->ptr[size_t(input_)] = static_cast<uint8_t*>(const_cast<void*>(input));
  if (output_ >= 0) ctx->ptr[size_t(output_)] = static_cast<uint8_t*>(output);
  if (check_finite && !first_step_checks_input())
    throw std::logic_error("executor plan: check_finite needs a first step that reads the whole input");
  ctx->check_finite = check_finite;
  ctx->nonfinite = false;
  if (seconds) seconds->assign(steps_.size(), 0.0);
  for (size_t i = 0; i < steps_.size(); ++i) {
    const double t0 = seconds ? now_seconds(thread_cpu) : 0.0;
    if (!steps_[i]->run(*ctx)) return ctx->nonfinite ? kNonFiniteInput : long(i);
    if (seconds) (*seconds)[i] = now_seconds(thread_cpu) - t0;
  }
  if (copy_out)
    for (const auto& [id, dst] : *copy_out) std::memcpy(dst, ctx->ptr.at(size_t(id)), buffers_.at(size_t(id)).bytes);
  return -1;
}

}  // namespace runtime
}  // namespace lowbit
