// Argument checks shared by the bindings (module.cc, executor.cc): lowbit's
// size limit and the lookup of a registry kernel this CPU can run. Each throws
// the Python exception that names what was wrong.
#pragma once
#include <pybind11/pybind11.h>

#include <cmath>
#include <cstddef>
#include <initializer_list>
#include <string>

#include "core/cpu_features.h"
#include "kernels/dwconv/dwconv.h"
#include "kernels/ukernel.h"

namespace lowbit {

// Size limits (docs/robustness.md): every dimension and every array the
// bindings allocate or index has at most 2^31 - 1 elements, checked before
// any allocation, so no size computation can overflow size_t.
constexpr size_t kMaxElements = (size_t(1) << 31) - 1;

// The product of `dims` (each checked too); ValueError naming `what` above kMaxElements.
inline size_t checked_product(std::initializer_list<size_t> dims, const char* what) {
  size_t count = 1;
  for (size_t d : dims)
    if (d > kMaxElements || __builtin_mul_overflow(count, d, &count) || count > kMaxElements)
      throw pybind11::value_error(std::string(what) + ": more than 2^31 - 1 elements (lowbit's size limit)");
  return count;
}

// ValueError unless this CPU has every feature of `tier` (kernel `name` needs it).
// The float64 step of a code epilogue (ops/epilogue.h): 0 (none: 1 / inv_step),
// or finite > 0 with |inv_step * step64 - 1| <= 2^-23 (inv_step is 1 / step rounded
// to float32: the two must describe one grid).
inline void check_step64(double step64, float inv_step) {
  if (step64 == 0) return;
  const double err = static_cast<double>(inv_step) * step64 - 1.0;
  if (!(std::isfinite(step64) && step64 > 0 && err <= 0x1p-23 && err >= -0x1p-23))
    throw pybind11::value_error("step64: expected 0 or the requantization step (finite > 0, with inv_step its "
                                "reciprocal rounded to float32), got " + std::to_string(step64) +
                                " for inv_step " + std::to_string(inv_step));
}

// Whether float64 `v` is finite and rounds to float32 `r` (no conversion out of range).
inline bool rounds_to(double v, float r) {
  return std::isfinite(v) && std::fabs(v) <= 3.4028234663852886e38 && static_cast<float>(v) == r;
}

inline void require_tier(Tier tier, const char* name) {
  if ((cpu_features() & tier_required_features(tier)) != tier_required_features(tier))
    throw pybind11::value_error(std::string("kernel ") + name + " needs CPU features this machine lacks");
}

// Registry kernel `index` (IndexError when out of range), runnable here (require_tier).
inline const KernelInfo& usable_kernel(size_t index) {
  size_t count = 0;
  const KernelInfo* reg = kernel_registry(&count);
  if (index >= count) throw pybind11::index_error("kernel index " + std::to_string(index) + " out of range");
  require_tier(reg[index].tier, reg[index].name);
  return reg[index];
}

// The same for the depthwise-convolution kernels' table.
inline const DwconvKernelInfo& usable_dwconv_kernel(size_t index) {
  size_t count = 0;
  const DwconvKernelInfo* reg = dwconv_kernels(&count);
  if (index >= count) throw pybind11::index_error("dwconv kernel index " + std::to_string(index) + " out of range");
  require_tier(reg[index].tier, reg[index].name);
  return reg[index];
}

}  // namespace lowbit
