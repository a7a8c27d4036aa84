// Python bindings (pybind11). Every precondition is checked here, before any
// pointer is touched; the Python layer adds friendlier checks on top.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>

#include "core/cpu_features.h"
#include "core/thread_pool.h"
#include "kernels/ukernel.h"
#include "ops/gemm.h"
#include "ops/pack.h"

namespace py = pybind11;
using namespace lowbit;

namespace {

const char* kFeatureNames[] = {"avx2",         "fma",         "bmi2",          "avx512f",        "avx512bw",
                               "avx512vl",     "avx512dq",    "avx512vbmi",    "avx512vbmi2",    "avx512vnni",
                               "avx512vpopcntdq", "avx512bitalg", "gfni"};

template <class T>
void require_array(const py::array& a, const char* name, int ndim, const char* dtype_name) {
  if (!a.dtype().is(py::dtype::of<T>()))
    throw py::type_error(std::string(name) + ": expected dtype " + dtype_name + ", got " +
                         std::string(py::str(a.dtype())));
  if (a.ndim() != ndim)
    throw py::value_error(std::string(name) + ": expected a " + std::to_string(ndim) + "-D array, got " +
                          std::to_string(a.ndim()) + "-D");
  if (!(a.flags() & py::array::c_style))
    throw py::value_error(std::string(name) + ": expected a C-contiguous array");
}

const KernelInfo& kernel_at(size_t index) {
  size_t count = 0;
  const KernelInfo* reg = kernel_registry(&count);
  if (index >= count) throw py::index_error("kernel index " + std::to_string(index) + " out of range");
  return reg[index];
}

Tier tier_from_int(int t) {
  if (t < 0 || t >= kNumTiers) throw py::value_error("tier: expected 0.." + std::to_string(kNumTiers - 1));
  return Tier(t);
}

py::dict features_dict() {
  py::dict d;
  const uint32_t f = cpu_features();
  for (size_t i = 0; i < sizeof(kFeatureNames) / sizeof(kFeatureNames[0]); ++i) d[kFeatureNames[i]] = bool(f & (1u << i));
  return d;
}

py::list tier_list() {
  py::list out;
  for (int t = 0; t < kNumTiers; ++t) {
    py::dict d;
    d["name"] = tier_name(Tier(t));
    d["rank"] = t;
    py::list req;
    const uint32_t r = tier_required_features(Tier(t));
    for (size_t i = 0; i < sizeof(kFeatureNames) / sizeof(kFeatureNames[0]); ++i)
      if (r & (1u << i)) req.append(kFeatureNames[i]);
    d["requires"] = req;
    d["supported"] = (cpu_features() & r) == r;
    out.append(d);
  }
  return out;
}

py::list kernel_list() {
  size_t count = 0;
  const KernelInfo* reg = kernel_registry(&count);
  py::list out;
  for (size_t i = 0; i < count; ++i) {
    const KernelInfo& k = reg[i];
    py::dict d;
    d["index"] = i;
    d["name"] = k.name;
    d["family"] = k.family;
    d["w_bits"] = k.w_bits;
    d["a_bits"] = k.a_bits;
    d["tier"] = tier_name(k.tier);
    d["tier_rank"] = int(k.tier);
    d["mr"] = k.mr;
    d["nr"] = k.nr;
    d["table_kind"] = k.table_kind == TableKind::i8 ? "i8" : "split";
    d["description"] = k.description;
    out.append(d);
  }
  return out;
}

py::array_t<uint8_t> pack_groups_py(const py::array& codes, int bits, int group, size_t out_stride, int tier) {
  require_array<uint8_t>(codes, "codes", 2, "uint8");
  if (bits < 1 || bits > 8) throw py::value_error("bits: expected 1..8");
  if (!(group == 1 || group == 2 || group == 4 || group == 8) || group * bits > 8)
    throw py::value_error("group: expected 1, 2, 4 or 8 with group * bits <= 8");
  const size_t M = size_t(codes.shape(0)), K = size_t(codes.shape(1));
  if (out_stride < (K + size_t(group) - 1) / size_t(group))
    throw py::value_error("out_stride: too small for K=" + std::to_string(K));
  py::array_t<uint8_t> out({M, out_stride});
  const uint8_t* src = static_cast<const uint8_t*>(codes.data());
  uint8_t* dst = out.mutable_data();
  bool ok;
  {
    py::gil_scoped_release release;
    ok = pack_groups(src, M, K, bits, group, dst, out_stride, tier_from_int(tier));
  }
  if (!ok) throw py::value_error("codes: expected every code in [0, " + std::to_string(1 << bits) + ")");
  return out;
}

py::array_t<int32_t> gemm_py(size_t kernel_index, const py::array& a, const py::array& w, const py::array& tables,
                             size_t M, size_t N, size_t k_steps, uint32_t flush8, uint32_t flush16,
                             int64_t correction) {
  const KernelInfo& k = kernel_at(kernel_index);
  if ((cpu_features() & tier_required_features(k.tier)) != tier_required_features(k.tier))
    throw py::value_error(std::string("kernel ") + k.name + " needs CPU features this machine lacks");
  require_array<uint8_t>(a, "a", 2, "uint8");
  require_array<uint8_t>(w, "w", 1, "uint8");
  require_array<int8_t>(tables, "tables", 1, "int8");
  GemmGeometry g;
  std::string why;
  if (!gemm_geometry(k, N, k_steps, &g, &why)) throw py::value_error(why);
  if (size_t(a.shape(0)) < M || size_t(a.shape(1)) < g.a_row_bytes)
    throw py::value_error("a: expected at least " + std::to_string(M) + " x " + std::to_string(g.a_row_bytes) +
                          " packed bytes for kernel " + k.name);
  if (size_t(w.shape(0)) < g.w_bytes)
    throw py::value_error("w: expected at least " + std::to_string(g.w_bytes) + " bytes for kernel " + k.name);
  if (size_t(tables.shape(0)) < g.table_bytes)
    throw py::value_error("tables: expected at least " + std::to_string(g.table_bytes) + " bytes");
  if (flush8 == 0 || flush16 == 0) throw py::value_error("flush8/flush16: expected >= 1");
  if (correction < INT32_MIN || correction > INT32_MAX) throw py::value_error("correction: out of int32 range");
  py::array_t<int32_t> out({M, N});
  GemmCall call;
  call.kernel = &k;
  call.a = static_cast<const uint8_t*>(a.data());
  call.a_stride = size_t(a.shape(1));
  call.w = static_cast<const uint8_t*>(w.data());
  call.tables = static_cast<const int8_t*>(tables.data());
  call.M = M;
  call.N = N;
  call.k_steps = k_steps;
  call.flush8 = flush8;
  call.flush16 = flush16;
  call.correction = int32_t(correction);
  call.c = out.mutable_data();
  call.c_stride = N;
  {
    py::gil_scoped_release release;
    run_gemm(call, g);
  }
  return out;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "lowbit native core: CPU dispatch, kernel registry, packers and GEMM driver";
  m.def("cpu_features", &features_dict, "CPU features detected with cpuid + xgetbv");
  m.def("tiers", &tier_list, "ISA tiers in chain order, with required features and support here");
  m.def("kernels", &kernel_list, "The kernel registry");
  m.def("pack_groups", &pack_groups_py, py::arg("codes"), py::arg("bits"), py::arg("group"), py::arg("out_stride"),
        py::arg("tier"));
  m.def("gemm", &gemm_py, py::arg("kernel_index"), py::arg("a"), py::arg("w"), py::arg("tables"), py::arg("M"),
        py::arg("N"), py::arg("k_steps"), py::arg("flush8"), py::arg("flush16"), py::arg("correction"));
  m.def("get_num_threads", &get_num_threads);
  m.def("set_num_threads", &set_num_threads);
  m.def("default_num_threads", &default_num_threads);
}
