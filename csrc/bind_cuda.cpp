// fastui._C_cuda: pybind11 bindings of the CUDA launchers (csrc/core_cuda.cu, compiled by nvcc and linked here with
// the static CUDA runtime, so importing needs neither libcudart nor a driver; the runtime loads the driver lazily at
// the first call). Built with the host C++ compiler: no CUDA headers and no torch headers needed.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>
#include <utility>

#include "core_cuda.h"

namespace py = pybind11;

namespace {

void check(const std::string& error) {
  if (!error.empty()) throw std::runtime_error(error);
}

}  // namespace

PYBIND11_MODULE(_C_cuda, m) {
  m.doc() = "fastui CUDA kernels (generator-loss core, DSM loss) on raw addresses; called by fastui.backends.cuda";
  m.attr("ABI_VERSION") = 1;
#ifdef FASTUI_CUDA_ARCHS
  m.attr("ARCHS") = FASTUI_CUDA_ARCHS;
#else
  m.attr("ARCHS") = "";
#endif
  m.def(
      "device_count",
      []() {
        std::string error;
        const int n = fastui_cuda::device_count(&error);
        return std::make_pair(n, error);
      },
      "(number of CUDA devices, error text of the runtime when it sees none); never raises.");
  m.def("runtime_version", &fastui_cuda::runtime_version, "CUDA runtime version the module was linked with.");
  m.def(
      "num_chunks",
      [](int64_t batch, int64_t d, int device) {
        std::string error;
        const int64_t n = fastui_cuda::num_chunks(batch, d, device, &error);
        check(error);
        return n;
      },
      "Row chunks of a [batch, d] problem (workspace floats: batch * chunks * 4 for the core, * 2 for DSM).",
      py::arg("batch"), py::arg("d"), py::arg("device"));
  m.def(
      "core_forward",
      [](uintptr_t x, uintptr_t dt, uintptr_t df, uintptr_t k, int64_t batch, int64_t d, int dtype, bool normalize,
         double c_clip, uintptr_t loss, uintptr_t valid, uintptr_t gx, uintptr_t gdt, uintptr_t gdf,
         uintptr_t workspace, int64_t chunks, int device, uintptr_t stream) {
        std::string error;
        {
          py::gil_scoped_release release;
          error = fastui_cuda::core_forward(x, dt, df, k, batch, d, dtype, normalize, static_cast<float>(c_clip),
                                            loss, valid, gx, gdt, gdf, workspace, chunks, device, stream);
        }
        check(error);
      },
      "Enqueue the core on `stream` (loss/valid, + gradients when their addresses are nonzero); see core_cuda.cu.",
      py::arg("x"), py::arg("dt"), py::arg("df"), py::arg("k"), py::arg("batch"), py::arg("d"), py::arg("dtype"),
      py::arg("normalize"), py::arg("c_clip"), py::arg("loss"), py::arg("valid"), py::arg("gx"), py::arg("gdt"),
      py::arg("gdf"), py::arg("workspace"), py::arg("chunks"), py::arg("device"), py::arg("stream"));
  m.def(
      "dsm_forward",
      [](uintptr_t df, uintptr_t x, uintptr_t lam, int64_t batch, int64_t d, int dtype, uintptr_t loss,
         uintptr_t valid, uintptr_t g, uintptr_t workspace, int64_t chunks, int device, uintptr_t stream) {
        std::string error;
        {
          py::gil_scoped_release release;
          error = fastui_cuda::dsm_forward(df, x, lam, batch, d, dtype, loss, valid, g, workspace, chunks, device,
                                           stream);
        }
        check(error);
      },
      "Enqueue the DSM loss on `stream` (+ gradient w.r.t. d_fake when its address is nonzero); see core_cuda.cu.",
      py::arg("df"), py::arg("x"), py::arg("lam"), py::arg("batch"), py::arg("d"), py::arg("dtype"), py::arg("loss"),
      py::arg("valid"), py::arg("g"), py::arg("workspace"), py::arg("chunks"), py::arg("device"), py::arg("stream"));
}
