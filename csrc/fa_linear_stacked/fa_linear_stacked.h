// fa_linear_stacked: M independent FA linear layers (one per model of a batched sweep) as one
// batched GEMM. Model m's slice is exactly fa_linear on that model's tensors.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <array>
#include <tuple>

namespace soap_cuda {

void check_fa_linear_stacked_args(const at::Tensor& input, const at::Tensor& weight,
                                  const c10::optional<at::Tensor>& bias,
                                  const at::Tensor& b_matrix);

void check_fa_linear_stacked_backward_args(const at::Tensor& grad_output,
                                           const at::Tensor& input, const at::Tensor& b_matrix);

// Device-generic bodies (ATen baddbmm / bmm); CPU registration in fa_linear_stacked.cpp, CUDA
// in fa_linear_stacked_cuda.cpp.
at::Tensor fa_linear_stacked_forward(const at::Tensor& input, const at::Tensor& weight,
                                     const c10::optional<at::Tensor>& bias,
                                     const at::Tensor& b_matrix);

std::tuple<c10::optional<at::Tensor>, c10::optional<at::Tensor>, c10::optional<at::Tensor>>
fa_linear_stacked_backward(const at::Tensor& grad_output, const at::Tensor& input,
                           const at::Tensor& b_matrix, std::array<bool, 3> output_mask);

}  // namespace soap_cuda
