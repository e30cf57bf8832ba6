// fa_linear: a linear layer whose backward routes the error through a fixed matrix B.
// The math is three GEMM-shaped products, so both backends call ATen's GEMMs (MKL/OpenBLAS on
// CPU, cuBLAS on CUDA); what this op adds is doing all of a layer's backward in one native call,
// skipping grad_input when it is not needed, with no Python in between.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <array>
#include <tuple>

namespace soap_cuda {

void check_fa_linear_args(const at::Tensor& input, const at::Tensor& weight,
                          const c10::optional<at::Tensor>& bias, const at::Tensor& b_matrix);

void check_fa_linear_backward_args(const at::Tensor& grad_output, const at::Tensor& input,
                                   const at::Tensor& b_matrix);

// Device-generic bodies; the CPU and CUDA registrations wrap them (the CUDA one with a device guard).
at::Tensor fa_linear_forward(const at::Tensor& input, const at::Tensor& weight,
                             const c10::optional<at::Tensor>& bias, const at::Tensor& b_matrix);

std::tuple<at::Tensor, at::Tensor, at::Tensor> fa_linear_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& b_matrix,
    std::array<bool, 3> output_mask);

}  // namespace soap_cuda
