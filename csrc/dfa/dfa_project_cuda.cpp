// CUDA kernel of dfa_project: the device-generic body of dfa_project.cpp on the error's device
// (cuBLAS through ATen, current stream). Plain C++, compiled in CUDA builds only.
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "dfa_project.h"

namespace soap_cuda {
namespace {

at::Tensor dfa_project_cuda(const at::Tensor& error, at::TensorList b_matrices) {
  const c10::cuda::OptionalCUDAGuard guard(error.device());
  return dfa_project(error, b_matrices);
}

}  // namespace

TORCH_LIBRARY_IMPL(soap_cuda, CUDA, m) {
  m.impl("dfa_project", &dfa_project_cuda);
}

}  // namespace soap_cuda
