#include "feedback_sync.h"

#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>

#include <string>

#include "../common/checks.h"

namespace soap_cuda {

void check_feedback_sync_args(at::TensorList weights, at::TensorList b_matrices,
                              const c10::List<c10::optional<at::Tensor>>& magnitudes,
                              const at::Tensor& scales) {
  constexpr const char* op = "feedback_sync_";
  const size_t n = weights.size();
  TORCH_CHECK(b_matrices.size() == n && magnitudes.size() == n, "soap_cuda::feedback_sync_: "
              "arguments 'weights', 'b_matrices' and 'magnitudes' must have the same length, got ",
              n, ", ", b_matrices.size(), " and ", magnitudes.size());
  check_dim(op, "scales", scales, 1);
  TORCH_CHECK(scales.scalar_type() == at::kDouble, "soap_cuda::feedback_sync_: argument "
              "'scales' must be float64, got ", scales.scalar_type());
  TORCH_CHECK(static_cast<size_t>(scales.numel()) == n, "soap_cuda::feedback_sync_: argument "
              "'scales' must have one entry per layer (", n, "), got ", scales.numel());
  check_contiguous(op, "scales", scales);
  if (n == 0) return;
  const at::Tensor& first = weights[0];
  check_same_device(op, "scales", scales, "weights[0]", first);
  for (size_t i = 0; i < n; ++i) {
    const std::string wi = "weights[" + std::to_string(i) + "]";
    const std::string bi = "b_matrices[" + std::to_string(i) + "]";
    const at::Tensor& w = weights[i];
    const at::Tensor& b = b_matrices[i];
    check_floating(op, wi.c_str(), w);
    check_same_dtype(op, wi.c_str(), w, "weights[0]", first);
    check_same_device(op, wi.c_str(), w, "weights[0]", first);
    check_contiguous(op, wi.c_str(), w);
    TORCH_CHECK(b.sizes() == w.sizes(), "soap_cuda::feedback_sync_: argument '", bi,
                "' must have the shape of '", wi, "' ", w.sizes(), ", got ", b.sizes());
    check_same_dtype(op, bi.c_str(), b, wi.c_str(), w);
    check_same_device(op, bi.c_str(), b, wi.c_str(), w);
    check_contiguous(op, bi.c_str(), b);
    TORCH_CHECK(at::get_overlap_status(b, w) == at::MemOverlapStatus::No,
                "soap_cuda::feedback_sync_: argument '", bi, "' must not be the same memory as '",
                wi, "'");
    const c10::optional<at::Tensor> m = magnitudes.get(i);
    if (m.has_value() && m->defined()) {
      const std::string mi = "magnitudes[" + std::to_string(i) + "]";
      TORCH_CHECK(m->sizes() == w.sizes(), "soap_cuda::feedback_sync_: argument '", mi,
                  "' must have the shape of '", wi, "' ", w.sizes(), ", got ", m->sizes());
      check_same_dtype(op, mi.c_str(), *m, wi.c_str(), w);
      check_same_device(op, mi.c_str(), *m, wi.c_str(), w);
      check_contiguous(op, mi.c_str(), *m);
    }
  }
}

}  // namespace soap_cuda
