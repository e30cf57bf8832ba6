// fa_conv: an N-d convolution (1, 2 or 3 spatial dims, zero padding, as F.conv{1,2,3}d) whose
// backward routes the error through a fixed filter bank B of the weight's shape. grad_input is
// the transposed convolution of grad_output with B (what nn.Conv does with W); both backends
// call ATen's convolution and convolution_backward (oneDNN/native on CPU, cuDNN on CUDA) with B
// in W's place: no convolution is written here.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Optional.h>

#include <array>
#include <tuple>

namespace soap_cuda {

void check_fa_conv_args(const at::Tensor& input, const at::Tensor& weight,
                        const c10::optional<at::Tensor>& bias, const at::Tensor& b_matrix,
                        at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                        int64_t groups);

void check_fa_conv_backward_args(const at::Tensor& grad_output, const at::Tensor& input,
                                 const at::Tensor& b_matrix, at::IntArrayRef stride,
                                 at::IntArrayRef padding, at::IntArrayRef dilation,
                                 int64_t groups);

// Device-generic bodies; the CPU registration is in fa_conv.cpp, the CUDA one in fa_conv_cuda.cpp.
at::Tensor fa_conv_forward(const at::Tensor& input, const at::Tensor& weight,
                           const c10::optional<at::Tensor>& bias, const at::Tensor& b_matrix,
                           at::IntArrayRef stride, at::IntArrayRef padding,
                           at::IntArrayRef dilation, int64_t groups);

std::tuple<at::Tensor, at::Tensor, at::Tensor> fa_conv_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& b_matrix,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    std::array<bool, 3> output_mask);

}  // namespace soap_cuda
