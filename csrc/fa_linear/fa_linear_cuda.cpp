// CUDA kernels of fa_linear: the device-generic bodies of fa_linear.cpp, run on the input's device;
// the GEMMs go to cuBLAS(Lt) through ATen on the current stream (no kernel of our own: plain C++,
// compiled in CUDA builds only).
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "fa_linear.h"

namespace soap_cuda {
namespace {

at::Tensor fa_linear_forward_cuda(const at::Tensor& input, const at::Tensor& weight,
                                  const c10::optional<at::Tensor>& bias,
                                  const at::Tensor& b_matrix) {
  const c10::cuda::OptionalCUDAGuard guard(input.device());
  return fa_linear_forward(input, weight, bias, b_matrix);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fa_linear_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& b_matrix,
    std::array<bool, 3> output_mask) {
  const c10::cuda::OptionalCUDAGuard guard(grad_output.device());
  return fa_linear_backward(grad_output, input, b_matrix, output_mask);
}

}  // namespace

TORCH_LIBRARY_IMPL(soap_cuda, CUDA, m) {
  m.impl("fa_linear", &fa_linear_forward_cuda);
  m.impl("fa_linear_backward", &fa_linear_backward_cuda);
}

}  // namespace soap_cuda
