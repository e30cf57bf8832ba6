// fa_linear's argument checks and device-generic bodies (ATen GEMMs: MKL/OpenBLAS on CPU, cuBLAS
// on CUDA), registered here as the CPU kernels; fa_linear_cuda.cpp registers them for CUDA.
#include "fa_linear.h"

#include <ATen/ops/addmm.h>
#include <ATen/ops/mm.h>
#include <torch/library.h>

#include <vector>

#include "../common/checks.h"

namespace soap_cuda {

void check_fa_linear_args(const at::Tensor& input, const at::Tensor& weight,
                          const c10::optional<at::Tensor>& bias, const at::Tensor& b_matrix) {
  constexpr const char* op = "fa_linear";
  check_floating(op, "input", input);
  SOAP_CHECK(input.dim() >= 1, "soap_cuda::fa_linear: argument 'input' must have at least 1 "
              "dimension (..., in_features), got a 0-D tensor");
  check_dim(op, "weight", weight, 2);
  check_same_dtype(op, "weight", weight, "input", input);
  check_same_device(op, "weight", weight, "input", input);
  SOAP_CHECK(input.size(-1) == weight.size(1), "soap_cuda::fa_linear: argument 'input' must "
              "end in in_features=", weight.size(1), " (weight is ", weight.sizes(),
              "), got shape ", input.sizes());
  SOAP_CHECK(b_matrix.sizes() == weight.sizes(), "soap_cuda::fa_linear: argument 'b_matrix' "
              "must have the shape of 'weight' ", weight.sizes(), ", got ", b_matrix.sizes());
  check_same_dtype(op, "b_matrix", b_matrix, "input", input);
  check_same_device(op, "b_matrix", b_matrix, "input", input);
  if (bias.has_value() && bias->defined()) {
    SOAP_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0), "soap_cuda::fa_linear: "
                "argument 'bias' must have shape [", weight.size(0), "] (out_features), got ",
                bias->sizes());
    check_same_dtype(op, "bias", *bias, "input", input);
    check_same_device(op, "bias", *bias, "input", input);
  }
}

void check_fa_linear_backward_args(const at::Tensor& grad_output, const at::Tensor& input,
                                   const at::Tensor& b_matrix) {
  constexpr const char* op = "fa_linear_backward";
  check_floating(op, "grad_output", grad_output);
  check_dim(op, "b_matrix", b_matrix, 2);
  SOAP_CHECK(input.dim() >= 1 && input.size(-1) == b_matrix.size(1),
              "soap_cuda::fa_linear_backward: argument 'input' must end in in_features=",
              b_matrix.size(1), ", got shape ", input.sizes());
  SOAP_CHECK(grad_output.dim() == input.dim() && grad_output.size(-1) == b_matrix.size(0) &&
                  grad_output.sizes().slice(0, grad_output.dim() - 1) ==
                      input.sizes().slice(0, input.dim() - 1),
              "soap_cuda::fa_linear_backward: argument 'grad_output' must have shape (..., ",
              b_matrix.size(0), ") with the leading dims of 'input' ", input.sizes(), ", got ",
              grad_output.sizes());
  check_same_dtype(op, "input", input, "grad_output", grad_output);
  check_same_dtype(op, "b_matrix", b_matrix, "grad_output", grad_output);
  check_same_device(op, "input", input, "grad_output", grad_output);
  check_same_device(op, "b_matrix", b_matrix, "grad_output", grad_output);
}

// (..., k) -> (rows, k); a view when the layout allows it, else one copy (non-contiguous input).
static at::Tensor as_rows(const at::Tensor& t) { return t.reshape({-1, t.size(-1)}); }

static std::vector<int64_t> with_last_dim(const at::Tensor& t, int64_t last) {
  std::vector<int64_t> shape(t.sizes().begin(), t.sizes().end());
  shape.back() = last;
  return shape;
}

at::Tensor fa_linear_forward(const at::Tensor& input, const at::Tensor& weight,
                             const c10::optional<at::Tensor>& bias, const at::Tensor& b_matrix) {
  check_fa_linear_args(input, weight, bias, b_matrix);
  const auto x = as_rows(input);
  at::Tensor y;
  if (bias.has_value() && bias->defined()) {
    y = at::addmm(*bias, x, weight.t());  // bias add fused into the GEMM (beta * C)
  } else {
    y = at::mm(x, weight.t());
  }
  return y.view(with_last_dim(input, weight.size(0)));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fa_linear_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& b_matrix,
    std::array<bool, 3> output_mask) {
  check_fa_linear_backward_args(grad_output, input, b_matrix);
  const auto g = as_rows(grad_output);
  at::Tensor grad_input, grad_weight, grad_bias;
  if (output_mask[0]) {
    grad_input = at::mm(g, b_matrix).view(with_last_dim(input, b_matrix.size(1)));
  }
  if (output_mask[1]) {
    grad_weight = at::mm(g.t(), as_rows(input));
  }
  if (output_mask[2]) {
    grad_bias = g.sum(0);
  }
  return std::make_tuple(grad_input, grad_weight, grad_bias);
}

TORCH_LIBRARY_IMPL(soap_cuda, CPU, m) {
  m.impl("fa_linear", &fa_linear_forward);
  m.impl("fa_linear_backward", &fa_linear_backward);
}

}  // namespace soap_cuda
