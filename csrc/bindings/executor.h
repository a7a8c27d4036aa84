// The executor's bindings (bindings/executor.cc), registered by module.cc.
#pragma once
#include <pybind11/pybind11.h>

namespace lowbit {
void bind_executor(pybind11::module_& m);
}  // namespace lowbit
