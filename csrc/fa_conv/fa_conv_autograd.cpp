// soap_cuda-build: own translation unit (autograd and compiled-autograd headers are heavy)
// fa_conv's autograd formula in C++, registered for every backend's Autograd key (the same
// formula is registered from Python when the native library is absent). The node is lean
// (csrc/common/lean_node.h): the geometry is held as members, set once in the forward, so an
// FA conv layer's step pays what nn.Conv's generated node pays. Forward and backward call the
// ops through the dispatcher, so torch.compile, fake tensors and per-device kernels see them.
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/grad_mode.h>
#include <torch/library.h>

#include <vector>

#include "../common/feedback_grads.h"
#include "../common/lean_node.h"
#include "../common/op_handles.h"
#include "fa_conv.h"

namespace soap_cuda {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv_backward_op(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& b_matrix,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    std::array<bool, 3> mask) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("soap_cuda::fa_conv_backward", "")
                       .typed<decltype(fa_conv_backward)>();
  return op.call(grad_output, input, b_matrix, stride, padding, dilation, groups, mask);
}

struct ConvGeometry {
  std::vector<int64_t> stride, padding, dilation;
  int64_t groups = 1;
};

// (grad_input, grad_weight, grad_bias, grad_b_matrix) from one fa_conv_backward call asking
// only for what `needed` (one flag per forward tensor argument) says.
variable_list conv_grads(const at::Tensor& grad_output, const at::Tensor& input,
                         const at::Tensor& b_matrix, const ConvGeometry& g, bool has_bias,
                         const std::vector<bool>& needed) {
  const WantedGrads wanted{needed[0], needed[1], has_bias && needed[2], needed[3]};
  if (!grad_output.defined()) return variable_list(4);
  std::tuple<at::Tensor, at::Tensor, at::Tensor> grads;
  if (at::GradMode::is_enabled()) {
    // create_graph=True: through the op's own (Python-registered) double-backward formula.
    grads = conv_backward_op(grad_output, input, b_matrix, g.stride, g.padding, g.dilation,
                             g.groups, wanted.mask());
  } else {
    at::AutoDispatchBelowADInplaceOrView guard;
    grads = conv_backward_op(grad_output, input, b_matrix, g.stride, g.padding, g.dilation,
                             g.groups, wanted.mask());
  }
  // b_matrix gets a gradient only under Kolen-Pollack (W's)
  const auto out = wanted.outputs(grads);
  return variable_list(out.begin(), out.end());
}

struct FAConvBackward final : FeedbackNode<FAConvBackward> {
  static constexpr const char* kName = "SoapCudaFAConvBackward";
  ConvGeometry geometry_;

  variable_list apply(variable_list&& grads) override {
    std::lock_guard<std::mutex> lock(mutex_);
    return conv_grads(grads[0], input_.unpack(), b_matrix_.unpack(), geometry_, has_bias_,
                      needed());
  }

  void collect(CompiledNodeArgs& args) const {
    collect_saved(args);
    args.collect(geometry_.stride);
    args.collect(geometry_.padding);
    args.collect(geometry_.dilation);
    args.collect(geometry_.groups);
    args.collect(has_bias_);
  }

  void pack(PackedArgs& packed) const {
    pack_saved(packed);
    packed.pack(geometry_.stride);
    packed.pack(geometry_.padding);
    packed.pack(geometry_.dilation);
    packed.pack(geometry_.groups);
    packed.pack(has_bias_);
  }

  static variable_list functional(const variable_list& grads, PackedArgs& packed,
                                  const std::vector<bool>& needed) {
    const auto input = packed.unpack<at::Tensor>();
    const auto b_matrix = packed.unpack<at::Tensor>();
    ConvGeometry g;
    g.stride = packed.unpack<std::vector<int64_t>>();
    g.padding = packed.unpack<std::vector<int64_t>>();
    g.dilation = packed.unpack<std::vector<int64_t>>();
    g.groups = packed.unpack<int64_t>();
    const bool has_bias = packed.unpack<bool>();
    return conv_grads(grads[0], input, b_matrix, g, has_bias, needed);
  }
};

at::Tensor fa_conv_autograd(const at::Tensor& input, const at::Tensor& weight,
                            const c10::optional<at::Tensor>& bias, const at::Tensor& b_matrix,
                            at::IntArrayRef stride, at::IntArrayRef padding,
                            at::IntArrayRef dilation, int64_t groups) {
  at::Tensor output;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    output = fa_conv_op().call(input, weight, bias, b_matrix, stride, padding, dilation, groups);
  }
  if (!records_graph(input, weight, bias, b_matrix)) return output;
  check_no_forward_ad("fa_conv", input, weight, bias, b_matrix);
  auto node = c10::make_intrusive<FAConvBackward>();
  node->set_next_edges(torch::autograd::collect_next_edges(input, weight, bias, b_matrix));
  node->save(input, b_matrix, bias);
  node->geometry_ = {stride.vec(), padding.vec(), dilation.vec(), groups};
  torch::autograd::set_history(output, node);
  return output;
}

}  // namespace

TORCH_LIBRARY_IMPL(soap_cuda, Autograd, m) {
  m.impl("fa_conv", &fa_conv_autograd);
}

}  // namespace soap_cuda
