// CUDA kernels of fa_linear_stacked: the device-generic bodies of fa_linear_stacked.cpp on the
// input's device (batched cuBLAS through ATen, current stream). Compiled in CUDA builds only.
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "fa_linear_stacked.h"

namespace soap_cuda {
namespace {

at::Tensor forward_cuda(const at::Tensor& input, const at::Tensor& weight,
                        const c10::optional<at::Tensor>& bias, const at::Tensor& b_matrix) {
  const c10::cuda::OptionalCUDAGuard guard(input.device());
  return fa_linear_stacked_forward(input, weight, bias, b_matrix);
}

std::tuple<c10::optional<at::Tensor>, c10::optional<at::Tensor>, c10::optional<at::Tensor>>
backward_cuda(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& b_matrix,
              std::array<bool, 3> output_mask) {
  const c10::cuda::OptionalCUDAGuard guard(grad_output.device());
  return fa_linear_stacked_backward(grad_output, input, b_matrix, output_mask);
}

}  // namespace

TORCH_LIBRARY_IMPL(soap_cuda, CUDA, m) {
  m.impl("fa_linear_stacked", &forward_cuda);
  m.impl("fa_linear_stacked_backward", &backward_cuda);
}

}  // namespace soap_cuda
