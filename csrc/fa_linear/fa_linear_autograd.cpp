// soap_cuda-build: own translation unit (the heaviest file: it compiles in parallel with the rest)
// fa_linear's autograd formula in C++, registered for every backend's Autograd key.
//
// The same formula is registered from Python (torch.library.register_autograd) when the native
// library is absent; here it runs without entering Python at all, which is what keeps an FA
// train step as fast as nn.Linear's. Forward and backward both call the ops through the
// dispatcher, so torch.compile, fake tensors and per-device kernels all see the ops themselves.
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/grad_mode.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include "../common/feedback_grads.h"
#include "../common/op_handles.h"
#include "fa_linear.h"

namespace soap_cuda {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor call_forward(const at::Tensor& input, const at::Tensor& weight,
                        const c10::optional<at::Tensor>& bias, const at::Tensor& b_matrix) {
  return fa_linear_op().call(input, weight, bias, b_matrix);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> call_backward(const at::Tensor& grad_output,
                                                             const at::Tensor& input,
                                                             const at::Tensor& b_matrix,
                                                             std::array<bool, 3> mask) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("soap_cuda::fa_linear_backward", "")
                       .typed<decltype(fa_linear_backward)>();
  return op.call(grad_output, input, b_matrix, mask);
}

class FALinearFunction : public torch::autograd::Function<FALinearFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input,
                            const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                            const at::Tensor& b_matrix) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({input, b_matrix});
    ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
    return call_forward(input, weight, bias, b_matrix);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    const WantedGrads wanted = wanted_grads(ctx, has_bias);
    const std::array<bool, 3> mask = wanted.mask();
    std::tuple<at::Tensor, at::Tensor, at::Tensor> grads;
    if (at::GradMode::is_enabled()) {
      // create_graph=True: go through the op's own (Python-registered) autograd formula so
      // the double backward is recorded.
      grads = call_backward(grad_outputs[0], saved[0], saved[1], mask);
    } else {
      // A plain backward records nothing: go straight to the CPU/CUDA kernel, no Python.
      at::AutoDispatchBelowADInplaceOrView guard;
      grads = call_backward(grad_outputs[0], saved[0], saved[1], mask);
    }
    // b_matrix gets a gradient only under Kolen-Pollack (W's); otherwise it is fixed or synced.
    const auto [grad_input, grad_weight, grad_bias, grad_b] = wanted.outputs(grads);
    return {grad_input, grad_weight, grad_bias, grad_b};
  }
};

at::Tensor fa_linear_autograd(const at::Tensor& input, const at::Tensor& weight,
                              const c10::optional<at::Tensor>& bias, const at::Tensor& b_matrix) {
  if (!records_graph(input, weight, bias, b_matrix)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return call_forward(input, weight, bias, b_matrix);
  }
  return FALinearFunction::apply(input, weight, bias, b_matrix);
}

}  // namespace

TORCH_LIBRARY_IMPL(soap_cuda, Autograd, m) {
  m.impl("fa_linear", &fa_linear_autograd);
}

}  // namespace soap_cuda
