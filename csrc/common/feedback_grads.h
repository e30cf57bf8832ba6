// What the backward of an FA layer (fa_linear, fa_conv; tensor arguments input, weight, bias?,
// b_matrix) asks its backward op for, and what it hands back to autograd. Shared by the two
// C++ autograd Functions so the Kolen-Pollack rule cannot drift between them.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/grad_mode.h>
#include <c10/util/Optional.h>
#include <torch/csrc/autograd/custom_function.h>

#include <array>
#include <tuple>

namespace soap_cuda {

struct WantedGrads {
  bool input, weight, bias, b_matrix;

  // grad_weight is computed for B too: under Kolen-Pollack B receives W's gradient.
  std::array<bool, 3> mask() const { return {input, weight || b_matrix, bias}; }

  // (grad_input, grad_weight, grad_bias, grad_b_matrix). B's is a copy when W takes W's: the
  // two .grad tensors must not share memory (an in-place change of one, such as gradient
  // clipping, would change both).
  std::array<at::Tensor, 4> outputs(const std::tuple<at::Tensor, at::Tensor, at::Tensor>& grads)
      const {
    const auto& [grad_input, grad_weight, grad_bias] = grads;
    const at::Tensor grad_b =
        b_matrix ? (weight ? grad_weight.clone() : grad_weight) : at::Tensor();
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

// needs_input_grad counts tensor arguments only: b_matrix is the 4th with a bias, else the 3rd.
inline WantedGrads wanted_grads(torch::autograd::AutogradContext* ctx, bool has_bias) {
  return {ctx->needs_input_grad(0), ctx->needs_input_grad(1),
          has_bias && ctx->needs_input_grad(2), ctx->needs_input_grad(has_bias ? 3 : 2)};
}

}  // namespace soap_cuda
