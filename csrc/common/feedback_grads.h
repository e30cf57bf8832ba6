// What the backward of an FA layer (fa_linear, fa_conv; tensor arguments input, weight, bias?,
// b_matrix) asks its backward op for, and what it hands back to autograd. Shared by fa_linear's
// autograd Function and fa_conv's node so the Kolen-Pollack rule cannot drift between them.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/_lazy_clone.h>
#include <c10/core/impl/COW.h>
#include <c10/util/Optional.h>
#include <torch/csrc/autograd/custom_function.h>

#include <array>
#include <tuple>

#include "message.h"
#include "plain_tensor.h"

namespace soap_cuda {

// B's gradient under Kolen-Pollack when W takes the same one: a tensor of its own (an in-place
// change of one .grad, such as gradient clipping or unscaling, must not change the other), but
// copy-on-write where it can be: the data is shared until either is written, so a step whose
// optimizer only reads the gradients copies nothing. A backward that records a graph
// (create_graph) and tensors under tracing get a plain clone, and so do CUDA tensors: a
// copy-on-write materialises with a cudaMemcpy on the legacy default stream, which would not
// wait for kernels of a side stream, and a device copy costs a GPU step little anyway.
inline at::Tensor separate_gradient(const at::Tensor& grad) {
  if (!at::GradMode::is_enabled() && grad.is_cpu() && is_plain_dense(grad)) {
    const c10::StorageImpl& storage = *grad.storage().unsafeGetStorageImpl();
    if (c10::impl::cow::has_simple_data_ptr(storage) ||
        c10::impl::cow::is_cow_data_ptr(storage.data_ptr())) {
      return at::_lazy_clone(grad);
    }
  }
  return grad.clone();
}

struct WantedGrads {
  bool input, weight, bias, b_matrix;

  // grad_weight is computed for B too: under Kolen-Pollack B receives W's gradient.
  std::array<bool, 3> mask() const { return {input, weight || b_matrix, bias}; }

  // (grad_input, grad_weight, grad_bias, grad_b_matrix). B's is separate_gradient(W's) when W
  // takes it too, else W's own.
  std::array<at::Tensor, 4> outputs(const std::tuple<at::Tensor, at::Tensor, at::Tensor>& grads)
      const {
    const auto& [grad_input, grad_weight, grad_bias] = grads;
    const at::Tensor grad_b =
        b_matrix ? (weight ? separate_gradient(grad_weight) : grad_weight) : at::Tensor();
    return {grad_input, weight ? grad_weight : at::Tensor(), grad_bias, grad_b};
  }
};

// Whether a forward must build an autograd node: a gradient is wanted for some argument (B
// counts under Kolen-Pollack). Evaluation, no_grad and frozen layers skip the node (apply would
// still allocate one and save the inputs, ~2 us a call) and go straight to the kernel.
inline bool records_graph(const at::Tensor& input, const at::Tensor& weight,
                          const c10::optional<at::Tensor>& bias, const at::Tensor& b_matrix) {
  return at::GradMode::is_enabled() &&
         (input.requires_grad() || weight.requires_grad() || b_matrix.requires_grad() ||
          (bias.has_value() && bias->defined() && bias->requires_grad()));
}

// Forward-mode AD has no formula for the FA ops: refuse dual tensors, as autograd Functions do.
inline void check_no_forward_ad(const char* op, const at::Tensor& input, const at::Tensor& weight,
                                const c10::optional<at::Tensor>& bias,
                                const at::Tensor& b_matrix) {
  const auto dual = [](const at::Tensor& t) { return t.defined() && t._fw_grad(0).defined(); };
  TORCH_CHECK_NOT_IMPLEMENTED(
      !(dual(input) || dual(weight) || (bias.has_value() && dual(*bias)) || dual(b_matrix)),
      ::soap_cuda::message("soap_cuda::", op,
                           ": forward-mode AD (jvp, jacfwd, dual tensors) is not supported"));
}

// needs_input_grad counts tensor arguments only: b_matrix is the 4th with a bias, else the 3rd.
inline WantedGrads wanted_grads(torch::autograd::AutogradContext* ctx, bool has_bias) {
  return {ctx->needs_input_grad(0), ctx->needs_input_grad(1),
          has_bias && ctx->needs_input_grad(2), ctx->needs_input_grad(has_bias ? 3 : 2)};
}

}  // namespace soap_cuda
