// feedback_sync_: the periodic weight-to-feedback leak of sign-concordant FA rules, for all
// layers of a model in one call (one kernel launch on CUDA).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <vector>

namespace soap_cuda {

// Validates the lists and tensors (lengths, shapes, dtypes, devices, contiguity) and the
// optional due flags and noise streams; throws naming the argument. Memory overlap between
// layers is checked apart (check_sync_memory): a cached CUDA plan has checked it already.
void check_feedback_sync_args(at::TensorList weights, at::TensorList b_matrices,
                              const c10::List<c10::optional<at::Tensor>>& magnitudes,
                              const at::Tensor& scales, const c10::optional<at::Tensor>& due,
                              const c10::optional<at::Tensor>& streams);

// No B may share memory with its own W, another layer's W or another B.
void check_sync_memory(at::TensorList weights, at::TensorList b_matrices);

// Marks every B as written (its version counter), after a kernel wrote them.
void bump_versions(at::TensorList b_matrices);

void feedback_sync_cpu(at::TensorList weights, at::TensorList b_matrices,
                       const c10::List<c10::optional<at::Tensor>>& magnitudes,
                       const at::Tensor& scales, const c10::optional<at::Tensor>& due,
                       const c10::optional<at::Tensor>& streams);

}  // namespace soap_cuda
