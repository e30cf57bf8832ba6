// A hand-written autograd node for an FA op, as ATen's generated nodes are: the saved tensors
// and the op's other arguments are members, set once in the forward and read directly in the
// backward. torch::autograd::Function (what fa_linear uses) instead keeps arguments in a
// string-keyed map of IValues and wraps outputs generically, which costs microseconds a call
// on shapes where the arithmetic costs less.
//
// LeanNode<Derived> adds what every such node needs besides its formula: its name, and
// compiled autograd (torch._dynamo.config.compiled_autograd), which calls the node's formula
// as a functional op on the swapped-in saved tensors. Derived provides
//   static constexpr const char* kName;                      // a Python identifier
//   void collect(CompiledNodeArgs&) const;                   // its non-tensor arguments
//   void swap(SwapSavedVariables&, bool before);             // its SavedVariables
//   void pack(PackedArgs&) const;                            // saved tensors, then arguments
//   static variable_list functional(const variable_list& grads, PackedArgs&,
//                                   const std::vector<bool>& needed);
//   variable_list apply(variable_list&&) override;           // eager: calls the same formula
#pragma once

#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/saved_variable.h>
#include <torch/csrc/dynamo/compiled_autograd.h>

#include <mutex>
#include <string>
#include <vector>

namespace soap_cuda {

using torch::autograd::variable_list;
using torch::dynamo::autograd::CompiledNodeArgs;
using torch::dynamo::autograd::PackedArgs;
using torch::dynamo::autograd::SwapSavedVariables;

template <class Derived>
struct LeanNode : torch::autograd::Node {
  std::string name() const override { return Derived::kName; }

  // Which of the forward's tensor arguments the running backward wants gradients for.
  std::vector<bool> needed() const {
    std::vector<bool> out(num_outputs());
    for (size_t i = 0; i < out.size(); ++i) out[i] = task_should_compute_output(i);
    return out;
  }

  void compiled_args(CompiledNodeArgs& args) const override {
    args.collect(std::string(Derived::kName));
    static_cast<const Derived*>(this)->collect(args);
  }

  variable_list apply_with_saved(const variable_list& grads, SwapSavedVariables& saved) override {
    auto& self = *static_cast<Derived*>(this);
    self.swap(saved, /*before=*/true);
    PackedArgs packed;
    self.pack(packed);
    packed.pack(needed());
    std::vector<c10::IValue> args = std::move(packed).vec();
    const auto& py = torch::dynamo::autograd::getPyCompilerInterface();
    // The formula is bound once per process (compiled autograd's op namespace is global).
    static const bool bound = [&] {
      std::vector<at::TypePtr> schema;
      for (const auto& v : args) schema.push_back(v.isTensor() ? at::TensorType::get() : v.type());
      py->bind_function(saved.get_py_compiler(), Derived::kName, &call_functional, schema);
      return true;
    }();
    (void)bound;
    const auto metadata =
        torch::dynamo::autograd::IValuePacker<std::vector<std::optional<
            torch::autograd::InputMetadata>>>::pack(
            torch::dynamo::autograd::get_input_metadata(next_edges()));
    auto result = py->call_function(saved.get_py_compiler(), "apply_functional", Derived::kName,
                                    grads, args, metadata);
    self.swap(saved, /*before=*/false);
    return result;
  }

 private:
  static variable_list call_functional(const variable_list& grads,
                                       const std::vector<c10::IValue>& args) {
    PackedArgs packed(args);
    // the last packed value is `needed`; Derived unpacks everything before it in order
    const auto needed = args.back().toBoolList().vec();
    return Derived::functional(grads, packed, std::vector<bool>(needed.begin(), needed.end()));
  }
};

// What the FA nodes (fa_conv, fa_linear_stacked) save: the input and B, and whether the layer
// has a bias, with the saved-tensor handling that eager backward (release) and compiled
// autograd (swap, collect, pack) need. Derived collects and packs its own arguments between
// the saved tensors and has_bias_ (collect_saved / pack_saved, then its own, then has_bias_).
template <class Derived>
struct FeedbackNode : LeanNode<Derived> {
  torch::autograd::SavedVariable input_, b_matrix_;
  bool has_bias_ = false;

  void save(const at::Tensor& input, const at::Tensor& b_matrix,
            const c10::optional<at::Tensor>& bias) {
    input_ = torch::autograd::SavedVariable(input, false);
    b_matrix_ = torch::autograd::SavedVariable(b_matrix, false);
    has_bias_ = bias.has_value() && bias->defined();
  }

  void release_variables() override {
    std::lock_guard<std::mutex> lock(this->mutex_);
    input_.reset_data();
    b_matrix_.reset_data();
  }

  void swap(SwapSavedVariables& saved, bool before) {
    if (before) {
      saved.before(input_);
      saved.before(b_matrix_);
    } else {
      saved.after(input_);
      saved.after(b_matrix_);
    }
  }

  void collect_saved(CompiledNodeArgs& args) const {
    args.collect(input_, false);
    args.collect(b_matrix_, false);
  }

  void pack_saved(PackedArgs& packed) const {
    packed.pack(input_.unpack());
    packed.pack(b_matrix_.unpack());
  }
};

}  // namespace soap_cuda
