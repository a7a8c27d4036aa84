// The native whole-graph executor of lowbit.Model (docs/runtime.md).
//
// A Plan is one model prepared for one input shape: a list of Steps (the
// graph's nodes lowered to native operations, plus the activation packing
// and layout changes between them) and a byte range in one arena for every
// value a step writes. Everything that depends only on the weights (kernel
// layouts, tables, epilogue parameters) is built once by the Python side
// (lowbit.ops.Bound, ConvWeights) and referenced by pointer; everything that
// depends on the input shape (M, geometry, arena offsets, indirection
// offsets) is fixed when the plan is built ("setup"); Plan::run only
// computes.
//
// Buffers: arena buffers get an offset (64-byte aligned) by liveness: a
// buffer lives from the first step that touches it to the last, and two
// buffers whose lives overlap never share bytes. Two boundary buffers stand
// for the caller's input (NCHW float32) and output arrays.
//
// Concurrency: run() may be called from several threads at once. Each call
// takes a Context (an arena plus the indirection pointers into it) from the
// plan's idle list, or makes a new one when every context is busy, and
// returns it when done; steps are read-only during a run.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace lowbit {
namespace runtime {

struct Context;

// One native operation of a plan.
class Step {
 public:
  virtual ~Step() = default;
  // Per-context data (pointer arrays into this context's arena), built once
  // when a context is made.
  virtual void prepare(Context&) const {}
  // Runs the step; false when an activation code is out of range (the
  // outputs are then unspecified).
  virtual bool run(Context&) const = 0;

  const char* kind = "";           // the binding that made it ("gemm", "pack", ...: profiling)
  int node = -1;                   // graph node this step belongs to (profiling, errors)
  size_t index = 0;                // position in the plan
  std::vector<int> reads, writes;  // buffer ids (liveness)
};

enum class BufferKind : int { arena = 0, input = 1, output = 2 };

struct Buffer {
  size_t bytes = 0;
  BufferKind kind = BufferKind::arena;
  size_t offset = 0;          // arena buffers, after Plan::finalize
  int first = -1, last = -1;  // steps that touch it first and last
};

struct Context {
  std::unique_ptr<uint8_t, void (*)(void*)> arena{nullptr, nullptr};
  std::vector<uint8_t*> ptr;  // per buffer: this context's address (boundary buffers set per run)
  std::vector<std::vector<const uint8_t*>> indirection;  // per step: pointer arrays (empty when unused)
  // This run checks the input for NaN and Inf in its first step (Plan::run's
  // check_finite); that step sets `nonfinite` and stops the run on one.
  bool check_finite = false, nonfinite = false;

  template <class T>
  T* at(int buffer) const {
    return reinterpret_cast<T*>(ptr[size_t(buffer)]);
  }
};

class Plan {
 public:
  // A new arena buffer of `bytes` bytes.
  int add_buffer(size_t bytes);
  // The boundary buffers (at most one each): the caller's arrays of run().
  int input_buffer(size_t bytes);
  int output_buffer(size_t bytes);
  const Buffer& buffer(int id) const { return buffers_.at(size_t(id)); }
  size_t num_buffers() const { return buffers_.size(); }

  // Appends a step (its reads/writes must name existing buffers).
  void add_step(std::unique_ptr<Step> step);
  size_t num_steps() const { return steps_.size(); }
  const Step& step(size_t i) const { return *steps_.at(i); }
  // Step i, to extend before finalize (e.g. GemmStep::store); a buffer it
  // then writes must be declared with add_write().
  Step* mutable_step(size_t i);
  // Records that step i writes buffer `id` (its life grows to cover step i).
  void add_write(size_t i, int id);
  int step_node(size_t i) const { return steps_[i]->node; }
  const char* step_kind(size_t i) const { return steps_[i]->kind; }

  // Assigns arena offsets by liveness; no step may be added afterwards.
  // `keep_all`: every arena buffer lives for the whole run (no two share
  // bytes), so each holds its value after run() (a trace plan).
  void finalize(bool keep_all = false);
  bool finalized() const { return finalized_; }
  size_t arena_bytes() const { return arena_bytes_; }
  // Sum of the arena buffers' sizes (what the arena would take without reuse).
  size_t total_buffer_bytes() const;

  // Runs every step with the caller's input and output arrays (of at least
  // the boundary buffers' sizes). `seconds`, when given, receives each
  // step's time: wall clock (steady_clock), or with `thread_cpu` the calling
  // thread's CPU time (meaningful at one thread, where every step computes
  // on the caller; benchmarks on shared machines). `check_finite` (only for
  // a plan whose first_step_checks_input()): that step also checks the
  // input, and a NaN or Inf stops the run there (kNonFiniteInput; the output
  // is not written). Returns -1, kNonFiniteInput, or the index of the step
  // that found an out-of-range code. Thread-safe (see above); call without
  // the GIL.
  static constexpr long kNonFiniteInput = -2;
  // `copy_out`, when given: after the last step (and only after a run that
  // returns -1), each (buffer id, destination) pair gets a copy of that
  // buffer's bytes (a trace; meaningful on a plan finalized with keep_all;
  // each destination holds at least the buffer's size).
  long run(const void* input, void* output, std::vector<double>* seconds, bool thread_cpu = false,
           bool check_finite = false, const std::vector<std::pair<int, void*>>* copy_out = nullptr);
  // Whether step 0 is the quantizer of the whole NCHW input (QuantizeStep
  // with nchw), which can check the input as it reads it.
  bool first_step_checks_input() const;

 private:
  std::unique_ptr<Context> make_context() const;
  std::unique_ptr<Context> acquire();
  void release(std::unique_ptr<Context> ctx);

  std::vector<Buffer> buffers_;
  std::vector<std::unique_ptr<Step>> steps_;
  int input_ = -1, output_ = -1;
  bool finalized_ = false;
  size_t arena_bytes_ = 0;
  std::mutex idle_mutex_;
  std::vector<std::unique_ptr<Context>> idle_;
};

}  // namespace runtime
}  // namespace lowbit
