// CUDA kernels of fa_conv: the device-generic bodies of fa_conv.cpp on the input's device (cuDNN
// through ATen, current stream). Plain C++, compiled in CUDA builds only.
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "fa_conv.h"

namespace soap_cuda {
namespace {

at::Tensor fa_conv_forward_cuda(const at::Tensor& input, const at::Tensor& weight,
                                const c10::optional<at::Tensor>& bias, const at::Tensor& b_matrix,
                                at::IntArrayRef stride, at::IntArrayRef padding,
                                at::IntArrayRef dilation, int64_t groups) {
  const c10::cuda::OptionalCUDAGuard guard(input.device());
  return fa_conv_forward(input, weight, bias, b_matrix, stride, padding, dilation, groups);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fa_conv_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& b_matrix,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    std::array<bool, 3> output_mask) {
  const c10::cuda::OptionalCUDAGuard guard(grad_output.device());
  return fa_conv_backward(grad_output, input, b_matrix, stride, padding, dilation, groups,
                          output_mask);
}

}  // namespace

TORCH_LIBRARY_IMPL(soap_cuda, CUDA, m) {
  m.impl("fa_conv", &fa_conv_forward_cuda);
  m.impl("fa_conv_backward", &fa_conv_backward_cuda);
}

}  // namespace soap_cuda
