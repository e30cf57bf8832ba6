// soap_cuda-build: own translation unit (autograd and compiled-autograd headers are heavy)
// fa_linear_stacked's autograd formula in C++, registered for every backend's Autograd key, as
// fa_linear's and fa_conv's are (the same formula is registered from Python when the native
// library is absent): a lean node (csrc/common/lean_node.h) whose backward is one
// fa_linear_stacked_backward call asking only for the gradients autograd needs. B gets a
// gradient only when it requires one (Kolen-Pollack: W's, csrc/common/feedback_grads.h, the
// rule fa_linear and fa_conv follow).
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/grad_mode.h>
#include <torch/library.h>

#include "../common/feedback_grads.h"
#include "../common/lean_node.h"
#include "fa_linear_stacked.h"

namespace soap_cuda {
namespace {


at::Tensor stacked_forward_op(const at::Tensor& input, const at::Tensor& weight,
                              const c10::optional<at::Tensor>& bias, const at::Tensor& b_matrix) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("soap_cuda::fa_linear_stacked", "")
                       .typed<decltype(fa_linear_stacked_forward)>();
  return op.call(input, weight, bias, b_matrix);
}

std::tuple<c10::optional<at::Tensor>, c10::optional<at::Tensor>, c10::optional<at::Tensor>>
stacked_backward_op(const at::Tensor& grad_output, const at::Tensor& input,
                    const at::Tensor& b_matrix, std::array<bool, 3> mask) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("soap_cuda::fa_linear_stacked_backward", "")
                       .typed<decltype(fa_linear_stacked_backward)>();
  return op.call(grad_output, input, b_matrix, mask);
}

variable_list stacked_grads(const at::Tensor& grad_output, const at::Tensor& input,
                            const at::Tensor& b_matrix, bool has_bias,
                            const std::vector<bool>& needed) {
  const WantedGrads wanted{needed[0], needed[1], has_bias && needed[2], needed[3]};
  if (!grad_output.defined()) return variable_list(4);
  std::tuple<c10::optional<at::Tensor>, c10::optional<at::Tensor>, c10::optional<at::Tensor>>
      grads;
  if (at::GradMode::is_enabled()) {  // create_graph=True: record the backward op's own graph
    grads = stacked_backward_op(grad_output, input, b_matrix, wanted.mask());
  } else {
    at::AutoDispatchBelowADInplaceOrView guard;
    grads = stacked_backward_op(grad_output, input, b_matrix, wanted.mask());
  }
  const auto take = [](c10::optional<at::Tensor>& t) { return t ? std::move(*t) : at::Tensor(); };
  const auto out = wanted.outputs(
      {take(std::get<0>(grads)), take(std::get<1>(grads)), take(std::get<2>(grads))});
  return variable_list(out.begin(), out.end());
}

struct FALinearStackedBackward final : FeedbackNode<FALinearStackedBackward> {
  static constexpr const char* kName = "SoapCudaFALinearStackedBackward";

  variable_list apply(variable_list&& grads) override {
    std::lock_guard<std::mutex> lock(mutex_);
    return stacked_grads(grads[0], input_.unpack(), b_matrix_.unpack(), has_bias_, needed());
  }

  void collect(CompiledNodeArgs& args) const {
    collect_saved(args);
    args.collect(has_bias_);
  }

  void pack(PackedArgs& packed) const {
    pack_saved(packed);
    packed.pack(has_bias_);
  }

  static variable_list functional(const variable_list& grads, PackedArgs& packed,
                                  const std::vector<bool>& needed) {
    const auto input = packed.unpack<at::Tensor>();
    const auto b_matrix = packed.unpack<at::Tensor>();
    const bool has_bias = packed.unpack<bool>();
    return stacked_grads(grads[0], input, b_matrix, has_bias, needed);
  }
};

at::Tensor fa_linear_stacked_autograd(const at::Tensor& input, const at::Tensor& weight,
                                      const c10::optional<at::Tensor>& bias,
                                      const at::Tensor& b_matrix) {
  at::Tensor output;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    output = stacked_forward_op(input, weight, bias, b_matrix);
  }
  if (!records_graph(input, weight, bias, b_matrix)) return output;
  check_no_forward_ad("fa_linear_stacked", input, weight, bias, b_matrix);
  auto node = c10::make_intrusive<FALinearStackedBackward>();
  node->set_next_edges(torch::autograd::collect_next_edges(input, weight, bias, b_matrix));
  node->save(input, b_matrix, bias);
  torch::autograd::set_history(output, node);
  return output;
}

}  // namespace

TORCH_LIBRARY_IMPL(soap_cuda, Autograd, m) {
  m.impl("fa_linear_stacked", &fa_linear_stacked_autograd);
}

}  // namespace soap_cuda
