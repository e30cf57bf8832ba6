// feedback_sync_: the periodic weight-to-feedback leak of sign-concordant FA rules, for all
// layers of a model in one call (one kernel launch on CUDA).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <vector>

namespace soap_cuda {

// Validates the lists (lengths, shapes, dtypes, devices, contiguity); throws naming the entry.
void check_feedback_sync_args(at::TensorList weights, at::TensorList b_matrices,
                              const c10::List<c10::optional<at::Tensor>>& magnitudes,
                              const at::Tensor& scales);

// Marks every B as written (its version counter), after a kernel wrote them.
void bump_versions(at::TensorList b_matrices);

void feedback_sync_cpu(at::TensorList weights, at::TensorList b_matrices,
                       const c10::List<c10::optional<at::Tensor>>& magnitudes,
                       const at::Tensor& scales);

}  // namespace soap_cuda
