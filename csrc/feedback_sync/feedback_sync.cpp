// Argument checks of feedback_sync_, shared by the CPU and CUDA kernels, and the CPU kernel's
// registration (here, beside the dispatcher headers the checks already parse).
#include "feedback_sync.h"

#include <ATen/core/Tensor.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/core/List.h>
#include <torch/library.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "../common/checks.h"

namespace soap_cuda {
namespace {

// t must match ref's dtype and device (and shape, where same_shape), and be contiguous:
// B and |M| against W, and each W against weights[0].
void check_like(const char* op, const std::string& arg, const at::Tensor& t,
                const std::string& ref_arg, const at::Tensor& ref, bool same_shape) {
  SOAP_CHECK(!same_shape || t.sizes() == ref.sizes(), "soap_cuda::", op, ": argument '", arg,
              "' must have the shape of '", ref_arg, "' ", ref.sizes(), ", got ", t.sizes());
  check_same_dtype(op, arg.c_str(), t, ref_arg.c_str(), ref);
  check_same_device(op, arg.c_str(), t, ref_arg.c_str(), ref);
  check_contiguous(op, arg.c_str(), t);
}

// [start, end) of a contiguous tensor's bytes (empty for no elements).
std::pair<uintptr_t, uintptr_t> byte_range(const at::Tensor& t) {
  const auto start = reinterpret_cast<uintptr_t>(t.const_data_ptr());
  return {start, t.numel() == 0 ? start : start + t.numel() * t.element_size()};
}

bool ranges_overlap(std::pair<uintptr_t, uintptr_t> a, std::pair<uintptr_t, uintptr_t> b) {
  return a.first < a.second && b.first < b.second && a.first < b.second && b.first < a.second;
}

// A B written while another layer's W or B is read or written would make the result depend on
// the order of the writes (and race on CUDA). Layers may share a W: that is only read.
void check_no_cross_layer_overlap(at::TensorList weights, at::TensorList b_matrices) {
  const size_t n = weights.size();
  std::vector<std::pair<uintptr_t, uintptr_t>> w_range(n), b_range(n);
  for (size_t i = 0; i < n; ++i) {
    w_range[i] = byte_range(weights[i]);
    b_range[i] = byte_range(b_matrices[i]);
  }
  for (size_t i = 0; i < n; ++i) {
    for (size_t j = 0; j < n; ++j) {
      if (j == i) continue;
      SOAP_CHECK(!ranges_overlap(b_range[i], w_range[j]), "soap_cuda::feedback_sync_: argument "
                  "'b_matrices[", i, "]' must not share memory with 'weights[", j, "]'");
      SOAP_CHECK(j < i || !ranges_overlap(b_range[i], b_range[j]), "soap_cuda::feedback_sync_: "
                  "argument 'b_matrices[", i, "]' must not share memory with 'b_matrices[", j,
                  "]'");
    }
  }
}

}  // namespace

void check_feedback_sync_args(at::TensorList weights, at::TensorList b_matrices,
                              const c10::List<c10::optional<at::Tensor>>& magnitudes,
                              const at::Tensor& scales) {
  constexpr const char* op = "feedback_sync_";
  const size_t n = weights.size();
  SOAP_CHECK(b_matrices.size() == n && magnitudes.size() == n, "soap_cuda::feedback_sync_: "
              "arguments 'weights', 'b_matrices' and 'magnitudes' must have the same length, got ",
              n, ", ", b_matrices.size(), " and ", magnitudes.size());
  check_dim(op, "scales", scales, 1);
  SOAP_CHECK(scales.scalar_type() == at::kDouble, "soap_cuda::feedback_sync_: argument "
              "'scales' must be float64, got ", scales.scalar_type());
  SOAP_CHECK(static_cast<size_t>(scales.numel()) == n, "soap_cuda::feedback_sync_: argument "
              "'scales' must have one entry per layer (", n, "), got ", scales.numel());
  check_contiguous(op, "scales", scales);
  if (n == 0) return;
  const at::Tensor& first = weights[0];
  // On the CPU, the CUDA kernel takes the scales from its layer table (no device read, and the
  // caller needs no device tensor for them); on the weights' device, it reads them there.
  SOAP_CHECK(scales.device() == first.device() || scales.is_cpu(), "soap_cuda::feedback_sync_: "
              "argument 'scales' must be on the device of 'weights[0]' (", first.device(),
              ") or on the CPU, got ", scales.device());
  for (size_t i = 0; i < n; ++i) {
    const std::string wi = "weights[" + std::to_string(i) + "]";
    const std::string bi = "b_matrices[" + std::to_string(i) + "]";
    const at::Tensor& w = weights[i];
    const at::Tensor& b = b_matrices[i];
    check_floating(op, wi.c_str(), w);
    check_like(op, wi, w, "weights[0]", first, /*same_shape=*/false);
    check_like(op, bi, b, wi, w, /*same_shape=*/true);
    SOAP_CHECK(at::get_overlap_status(b, w) == at::MemOverlapStatus::No,
                "soap_cuda::feedback_sync_: argument '", bi, "' must not be the same memory as '",
                wi, "'");
    const c10::optional<at::Tensor> m = magnitudes.get(i);
    if (m.has_value() && m->defined()) {
      const std::string mi = "magnitudes[" + std::to_string(i) + "]";
      check_like(op, mi, *m, wi, w, /*same_shape=*/true);
    }
  }
  check_no_cross_layer_overlap(weights, b_matrices);
}

void bump_versions(at::TensorList b_matrices) {
  for (const at::Tensor& b : b_matrices) mark_written(b);
}

TORCH_LIBRARY_IMPL(soap_cuda, CPU, m) {
  m.impl("feedback_sync_", &feedback_sync_cpu);
}

}  // namespace soap_cuda
