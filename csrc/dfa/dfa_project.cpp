// dfa_project's argument checks (messages mirrored in soap_cuda/reference/dfa_project.py) and
// its device-generic body, registered here as the CPU kernel.
#include "dfa_project.h"

#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <torch/library.h>

#include <string>

#include "../common/checks.h"

namespace soap_cuda {

void check_dfa_project_args(const at::Tensor& error, at::TensorList b_matrices) {
  constexpr const char* op = "dfa_project";
  check_floating(op, "error", error);
  SOAP_CHECK(error.dim() >= 1, "soap_cuda::dfa_project: argument 'error' must have at least 1 "
             "dimension (..., out), got shape ", error.sizes());
  SOAP_CHECK(!b_matrices.empty(), "soap_cuda::dfa_project: argument 'b_matrices' must not be "
             "empty");
  const int64_t out = error.size(-1);
  for (size_t i = 0; i < b_matrices.size(); ++i) {
    const std::string arg = "b_matrices[" + std::to_string(i) + "]";
    const at::Tensor& b = b_matrices[i];
    SOAP_CHECK(b.dim() == 2 && b.size(0) == out, "soap_cuda::dfa_project: argument '", arg,
               "' must have shape (", out, ", k) (out = the last dim of 'error'), got ",
               b.sizes());
    check_same_dtype(op, arg.c_str(), b, "error", error);
    check_same_device(op, arg.c_str(), b, "error", error);
  }
}

at::Tensor dfa_project(const at::Tensor& error, at::TensorList b_matrices) {
  check_dfa_project_args(error, b_matrices);
  const int64_t out = error.size(-1);
  const at::Tensor rows = error.reshape({-1, out});
  const at::Tensor stacked = b_matrices.size() == 1 ? b_matrices[0] : at::cat(b_matrices, 1);
  return at::mm(rows, stacked);
}

TORCH_LIBRARY_IMPL(soap_cuda, CPU, m) {
  m.impl("dfa_project", &dfa_project);
}

}  // namespace soap_cuda
