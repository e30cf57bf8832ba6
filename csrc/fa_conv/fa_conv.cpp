// fa_conv's argument checks (messages mirrored in soap_cuda/reference/fa_conv.py) and
// device-generic bodies, registered here as the CPU kernels.
#include "fa_conv.h"

#include <ATen/ops/convolution.h>
#include <ATen/ops/convolution_backward.h>
#include <torch/library.h>

#include <vector>

#include "../common/checks.h"

namespace soap_cuda {
namespace {

void check_geometry(const char* op, const at::Tensor& b_matrix, int64_t spatial,
                    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                    int64_t groups) {
  const auto check_list = [&](const char* arg, at::IntArrayRef values, int64_t min) {
    SOAP_CHECK(static_cast<int64_t>(values.size()) == spatial, "soap_cuda::", op,
                ": argument '", arg, "' must have one entry per spatial dimension (", spatial,
                "), got ", values);
    for (const int64_t v : values) {
      SOAP_CHECK(v >= min, "soap_cuda::", op, ": argument '", arg, "' must be >= ", min,
                  ", got ", values);
    }
  };
  check_list("stride", stride, 1);
  check_list("padding", padding, 0);
  check_list("dilation", dilation, 1);
  SOAP_CHECK(groups >= 1 && b_matrix.size(0) % groups == 0, "soap_cuda::", op,
              ": argument 'groups' must be >= 1 and divide out_channels=", b_matrix.size(0),
              ", got ", groups);
}

void check_filters(const char* op, const char* arg, const at::Tensor& t) {
  SOAP_CHECK(t.dim() >= 3 && t.dim() <= 5, "soap_cuda::", op, ": argument '", arg,
              "' must be 3-, 4- or 5-D (out_channels, in_channels / groups, *kernel_size), "
              "got shape ", t.sizes());
}

void check_input(const char* op, const at::Tensor& input, const at::Tensor& filters,
                 int64_t groups) {
  SOAP_CHECK(input.dim() == filters.dim() && input.size(1) == filters.size(1) * groups,
              "soap_cuda::", op, ": argument 'input' must have shape (batch, ",
              filters.size(1) * groups, ", ", filters.dim() - 2, " spatial dims) for filters ",
              filters.sizes(), " and groups=", groups, ", got ", input.sizes());
}

}  // namespace

void check_fa_conv_args(const at::Tensor& input, const at::Tensor& weight,
                        const c10::optional<at::Tensor>& bias, const at::Tensor& b_matrix,
                        at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                        int64_t groups) {
  constexpr const char* op = "fa_conv";
  check_floating(op, "input", input);
  check_filters(op, "weight", weight);
  check_same_dtype(op, "weight", weight, "input", input);
  check_same_device(op, "weight", weight, "input", input);
  SOAP_CHECK(b_matrix.sizes() == weight.sizes(), "soap_cuda::fa_conv: argument 'b_matrix' "
              "must have the shape of 'weight' ", weight.sizes(), ", got ", b_matrix.sizes());
  check_same_dtype(op, "b_matrix", b_matrix, "input", input);
  check_same_device(op, "b_matrix", b_matrix, "input", input);
  check_geometry(op, weight, weight.dim() - 2, stride, padding, dilation, groups);
  check_input(op, input, weight, groups);
  if (bias.has_value() && bias->defined()) {
    SOAP_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0), "soap_cuda::fa_conv: "
                "argument 'bias' must have shape [", weight.size(0), "] (out_channels), got ",
                bias->sizes());
    check_same_dtype(op, "bias", *bias, "input", input);
    check_same_device(op, "bias", *bias, "input", input);
  }
}

void check_fa_conv_backward_args(const at::Tensor& grad_output, const at::Tensor& input,
                                 const at::Tensor& b_matrix, at::IntArrayRef stride,
                                 at::IntArrayRef padding, at::IntArrayRef dilation,
                                 int64_t groups) {
  constexpr const char* op = "fa_conv_backward";
  check_floating(op, "grad_output", grad_output);
  check_filters(op, "b_matrix", b_matrix);
  check_geometry(op, b_matrix, b_matrix.dim() - 2, stride, padding, dilation, groups);
  check_input(op, input, b_matrix, groups);
  SOAP_CHECK(grad_output.dim() == input.dim() && grad_output.size(0) == input.size(0) &&
                  grad_output.size(1) == b_matrix.size(0),
              "soap_cuda::fa_conv_backward: argument 'grad_output' must have shape (",
              input.size(0), ", ", b_matrix.size(0), ", ...) for input ", input.sizes(),
              ", got ", grad_output.sizes());
  check_same_dtype(op, "input", input, "grad_output", grad_output);
  check_same_dtype(op, "b_matrix", b_matrix, "grad_output", grad_output);
  check_same_device(op, "input", input, "grad_output", grad_output);
  check_same_device(op, "b_matrix", b_matrix, "grad_output", grad_output);
}

at::Tensor fa_conv_forward(const at::Tensor& input, const at::Tensor& weight,
                           const c10::optional<at::Tensor>& bias, const at::Tensor& b_matrix,
                           at::IntArrayRef stride, at::IntArrayRef padding,
                           at::IntArrayRef dilation, int64_t groups) {
  check_fa_conv_args(input, weight, bias, b_matrix, stride, padding, dilation, groups);
  const std::vector<int64_t> output_padding(stride.size(), 0);
  return at::convolution(input, weight, bias, stride, padding, dilation, /*transposed=*/false,
                         output_padding, groups);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fa_conv_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& b_matrix,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    std::array<bool, 3> output_mask) {
  check_fa_conv_backward_args(grad_output, input, b_matrix, stride, padding, dilation, groups);
  if (!output_mask[0] && !output_mask[1] && !output_mask[2]) return {};
  const std::vector<int64_t> output_padding(stride.size(), 0);
  const std::vector<int64_t> bias_sizes{b_matrix.size(0)};
  // grad_input uses the filters given (B); grad_weight and grad_bias do not read them at all.
  return at::convolution_backward(grad_output, input, b_matrix, bias_sizes, stride, padding,
                                  dilation, /*transposed=*/false, output_padding, groups,
                                  output_mask);
}

TORCH_LIBRARY_IMPL(soap_cuda, CPU, m) {
  m.impl("fa_conv", &fa_conv_forward);
  m.impl("fa_conv_backward", &fa_conv_backward);
}

}  // namespace soap_cuda
