// fa_linear_stacked's argument checks (messages mirrored in
// soap_cuda/reference/fa_linear_stacked.py) and device-generic bodies, registered here as the
// CPU kernels.
#include "fa_linear_stacked.h"

#include <ATen/ops/baddbmm.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/sum.h>
#include <torch/library.h>

#include "../common/checks.h"

namespace soap_cuda {

void check_fa_linear_stacked_args(const at::Tensor& input, const at::Tensor& weight,
                                  const c10::optional<at::Tensor>& bias,
                                  const at::Tensor& b_matrix) {
  constexpr const char* op = "fa_linear_stacked";
  check_floating(op, "input", input);
  check_dim(op, "input", input, 3);
  check_dim(op, "weight", weight, 3);
  SOAP_CHECK(weight.size(0) == input.size(0) && weight.size(2) == input.size(2),
             "soap_cuda::fa_linear_stacked: argument 'weight' must have shape (", input.size(0),
             ", out, ", input.size(2), ") for input ", input.sizes(), ", got ", weight.sizes());
  SOAP_CHECK(b_matrix.sizes() == weight.sizes(), "soap_cuda::fa_linear_stacked: argument "
             "'b_matrix' must have the shape of 'weight' ", weight.sizes(), ", got ",
             b_matrix.sizes());
  check_same_dtype(op, "weight", weight, "input", input);
  check_same_dtype(op, "b_matrix", b_matrix, "input", input);
  check_same_device(op, "weight", weight, "input", input);
  check_same_device(op, "b_matrix", b_matrix, "input", input);
  if (bias.has_value() && bias->defined()) {
    SOAP_CHECK(bias->dim() == 2 && bias->size(0) == weight.size(0) &&
                   bias->size(1) == weight.size(1),
               "soap_cuda::fa_linear_stacked: argument 'bias' must have shape [",
               weight.size(0), ", ", weight.size(1), "] (models, out), got ", bias->sizes());
    check_same_dtype(op, "bias", *bias, "input", input);
    check_same_device(op, "bias", *bias, "input", input);
  }
}

void check_fa_linear_stacked_backward_args(const at::Tensor& grad_output,
                                           const at::Tensor& input, const at::Tensor& b_matrix) {
  constexpr const char* op = "fa_linear_stacked_backward";
  check_floating(op, "grad_output", grad_output);
  check_dim(op, "grad_output", grad_output, 3);
  check_dim(op, "input", input, 3);
  check_dim(op, "b_matrix", b_matrix, 3);
  SOAP_CHECK(b_matrix.size(0) == input.size(0) && b_matrix.size(2) == input.size(2),
             "soap_cuda::fa_linear_stacked_backward: argument 'b_matrix' must have shape (",
             input.size(0), ", out, ", input.size(2), ") for input ", input.sizes(), ", got ",
             b_matrix.sizes());
  SOAP_CHECK(grad_output.size(0) == input.size(0) && grad_output.size(1) == input.size(1) &&
                 grad_output.size(2) == b_matrix.size(1),
             "soap_cuda::fa_linear_stacked_backward: argument 'grad_output' must have shape (",
             input.size(0), ", ", input.size(1), ", ", b_matrix.size(1), "), got ",
             grad_output.sizes());
  check_same_dtype(op, "input", input, "grad_output", grad_output);
  check_same_dtype(op, "b_matrix", b_matrix, "grad_output", grad_output);
  check_same_device(op, "input", input, "grad_output", grad_output);
  check_same_device(op, "b_matrix", b_matrix, "grad_output", grad_output);
}

at::Tensor fa_linear_stacked_forward(const at::Tensor& input, const at::Tensor& weight,
                                     const c10::optional<at::Tensor>& bias,
                                     const at::Tensor& b_matrix) {
  check_fa_linear_stacked_args(input, weight, bias, b_matrix);
  if (bias.has_value() && bias->defined()) {
    return at::baddbmm(bias->unsqueeze(1), input, weight.transpose(1, 2));
  }
  return at::bmm(input, weight.transpose(1, 2));
}

std::tuple<c10::optional<at::Tensor>, c10::optional<at::Tensor>, c10::optional<at::Tensor>>
fa_linear_stacked_backward(const at::Tensor& grad_output, const at::Tensor& input,
                           const at::Tensor& b_matrix, std::array<bool, 3> output_mask) {
  check_fa_linear_stacked_backward_args(grad_output, input, b_matrix);
  c10::optional<at::Tensor> grad_input, grad_weight, grad_bias;
  if (output_mask[0]) grad_input = at::bmm(grad_output, b_matrix);
  if (output_mask[1]) grad_weight = at::bmm(grad_output.transpose(1, 2), input);
  if (output_mask[2]) grad_bias = grad_output.sum(1);
  return std::make_tuple(grad_input, grad_weight, grad_bias);
}

TORCH_LIBRARY_IMPL(soap_cuda, CPU, m) {
  m.impl("fa_linear_stacked", &fa_linear_stacked_forward);
  m.impl("fa_linear_stacked_backward", &fa_linear_stacked_backward);
}

}  // namespace soap_cuda
