// The CUDA kernels of the perturbation ops behind a plain C++ interface: perturb_kernels.cu holds
// the kernels and includes nothing of ATen (nvcc parses a .cu once per GPU architecture);
// perturb_cuda.cpp does the checks, allocation, dtype dispatch and registration.
// Each launcher returns the launch's error code. T is float or double.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "perturb_math.h"

namespace soap_cuda {

// data[i] = noise element i of stream (seed, offset), i < n.
template <typename T>
cudaError_t launch_philox_normal_fill(T* data, int64_t n, uint64_t seed, uint64_t offset,
                                      cudaStream_t stream);

// out = act(pre + bias + sigma * s * xi) over the K-tiled batch [(K+1) * batch, width] (block 0
// clean); bias may be nullptr; out may be pre (in place).
template <typename T>
cudaError_t launch_perturbed_bias_act(const T* pre, const T* bias, T* out, int64_t batch,
                                      int64_t width, int64_t num_perturb, bool antithetic,
                                      T sigma, uint64_t seed, uint64_t offset, Activation act,
                                      cudaStream_t stream);

// out [rows, width] = factor * sum over slots of coef * xi, in the chunked order of
// perturb_math.h; partial: scratch of num_estimate_chunks(slots) * rows * width doubles (unused,
// may be nullptr, with one chunk).
template <typename T>
cudaError_t launch_perturb_estimate(const double* losses, T* out, double* partial, int64_t rows,
                                    int64_t width, int64_t slots, double factor, uint64_t seed,
                                    uint64_t offset, bool antithetic, cudaStream_t stream);

}  // namespace soap_cuda
