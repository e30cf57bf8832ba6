// dfa_project: the one GEMM of a direct-feedback-alignment backward. Every DFA layer's input
// error is e @ B_i, with e the network's output error; the B_i are concatenated so the whole
// network costs one GEMM of rows x out x sum(k_i) (tiny next to backprop's per-layer
// grad_input GEMMs, which DFA does not compute at all).
#pragma once

#include <ATen/core/Tensor.h>

namespace soap_cuda {

void check_dfa_project_args(const at::Tensor& error, at::TensorList b_matrices);

// Device-generic body (ATen cat + mm); CPU registration in dfa_project.cpp, CUDA in
// dfa_project_cuda.cpp.
at::Tensor dfa_project(const at::Tensor& error, at::TensorList b_matrices);

}  // namespace soap_cuda
