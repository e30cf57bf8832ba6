// fa_conv's autograd formula in C++, registered for every backend's Autograd key (the same
// formula is registered from Python when the native library is absent). Keeping Python out of
// the step is what holds an FA conv layer to nn.Conv's speed; forward and backward call the ops
// through the dispatcher, so torch.compile, fake tensors and per-device kernels see the ops.
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/grad_mode.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <vector>

#include "../common/feedback_grads.h"
#include "fa_conv.h"

namespace soap_cuda {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor call_forward(const at::Tensor& input, const at::Tensor& weight,
                        const c10::optional<at::Tensor>& bias, const at::Tensor& b_matrix,
                        at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                        int64_t groups) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("soap_cuda::fa_conv", "")
                       .typed<decltype(fa_conv_forward)>();
  return op.call(input, weight, bias, b_matrix, stride, padding, dilation, groups);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> call_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& b_matrix,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    std::array<bool, 3> mask) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("soap_cuda::fa_conv_backward", "")
                       .typed<decltype(fa_conv_backward)>();
  return op.call(grad_output, input, b_matrix, stride, padding, dilation, groups, mask);
}

class FAConvFunction : public torch::autograd::Function<FAConvFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input,
                            const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                            const at::Tensor& b_matrix, at::IntArrayRef stride,
                            at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({input, b_matrix});
    ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
    ctx->saved_data["stride"] = stride.vec();
    ctx->saved_data["padding"] = padding.vec();
    ctx->saved_data["dilation"] = dilation.vec();
    ctx->saved_data["groups"] = groups;
    return call_forward(input, weight, bias, b_matrix, stride, padding, dilation, groups);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    const WantedGrads wanted = wanted_grads(ctx, has_bias);
    const std::array<bool, 3> mask = wanted.mask();
    const auto stride = ctx->saved_data["stride"].toIntVector();
    const auto padding = ctx->saved_data["padding"].toIntVector();
    const auto dilation = ctx->saved_data["dilation"].toIntVector();
    const int64_t groups = ctx->saved_data["groups"].toInt();
    std::tuple<at::Tensor, at::Tensor, at::Tensor> grads;
    if (at::GradMode::is_enabled()) {
      // create_graph=True: through the op's own (Python-registered) double-backward formula.
      grads = call_backward(grad_outputs[0], saved[0], saved[1], stride, padding, dilation,
                            groups, mask);
    } else {
      at::AutoDispatchBelowADInplaceOrView guard;
      grads = call_backward(grad_outputs[0], saved[0], saved[1], stride, padding, dilation,
                            groups, mask);
    }
    // b_matrix gets a gradient only under Kolen-Pollack (W's); the geometry is not tensors.
    const auto [grad_input, grad_weight, grad_bias, grad_b] = wanted.outputs(grads);
    return {grad_input, grad_weight, grad_bias, grad_b, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor fa_conv_autograd(const at::Tensor& input, const at::Tensor& weight,
                            const c10::optional<at::Tensor>& bias, const at::Tensor& b_matrix,
                            at::IntArrayRef stride, at::IntArrayRef padding,
                            at::IntArrayRef dilation, int64_t groups) {
  if (!records_graph(input, weight, bias, b_matrix)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return call_forward(input, weight, bias, b_matrix, stride, padding, dilation, groups);
  }
  return FAConvFunction::apply(input, weight, bias, b_matrix, stride, padding, dilation, groups);
}

}  // namespace

TORCH_LIBRARY_IMPL(soap_cuda, Autograd, m) {
  m.impl("fa_conv", &fa_conv_autograd);
}

}  // namespace soap_cuda
