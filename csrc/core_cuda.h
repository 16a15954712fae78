// Host launchers of csrc/core_cuda.cu, callable from code built without CUDA headers (csrc/bind_cuda.cpp).
// Every function returns an empty string on success, otherwise the error text (the binding raises it).
#pragma once

#include <cstdint>
#include <string>

namespace fastui_cuda {

// Number of visible devices and the runtime's error text when it has none (no driver, no device): never throws, so
// importing the module and asking it works on machines without a GPU.
int device_count(std::string* error);
int runtime_version();

// Number of row chunks the kernels use for a [batch, d] problem on `device` (the workspace holds
// batch * chunks * 4 floats for the core, batch * chunks * 2 for DSM).
int64_t num_chunks(int64_t batch, int64_t d, int device, std::string* error);

std::string core_forward(uintptr_t x, uintptr_t dt, uintptr_t df, uintptr_t k, int64_t batch, int64_t d, int dtype,
                         bool normalize, float c_clip, uintptr_t loss, uintptr_t valid, uintptr_t gx, uintptr_t gdt,
                         uintptr_t gdf, uintptr_t workspace, int64_t chunks, int device, uintptr_t stream);

std::string dsm_forward(uintptr_t df, uintptr_t x, uintptr_t lam, int64_t batch, int64_t d, int dtype, uintptr_t loss,
                        uintptr_t valid, uintptr_t g, uintptr_t workspace, int64_t chunks, int device,
                        uintptr_t stream);

}  // namespace fastui_cuda
