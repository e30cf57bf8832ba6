// CPU kernel of feedback_sync_: one multi-threaded pass per layer (read W, read |M| when given,
// write B). The loop body is branch-free and the build passes -fno-trapping-math, so GCC
// vectorises the float/double loops (selects instead of branches; results are unchanged).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/OpMathType.h>
#include <ATen/core/List.h>

#include "feedback_sync.h"
#include "sync_element.h"

namespace soap_cuda {

// Elements per task: large enough that thread start-up is paid back (as ATen's GRAIN_SIZE).
constexpr int64_t kGrainSize = 32768;

void feedback_sync_cpu(at::TensorList weights, at::TensorList b_matrices,
                       const c10::List<c10::optional<at::Tensor>>& magnitudes,
                       const at::Tensor& scales) {
  check_feedback_sync_args(weights, b_matrices, magnitudes, scales);
  if (weights.empty()) return;
  const double* scale_ptr = scales.data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weights[0].scalar_type(),
                                  "feedback_sync_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    for (size_t i = 0; i < weights.size(); ++i) {
      const scalar_t* w = weights[i].const_data_ptr<scalar_t>();
      scalar_t* b = b_matrices[i].mutable_data_ptr<scalar_t>();
      const c10::optional<at::Tensor> mag = magnitudes.get(i);
      const bool has_mag = mag.has_value() && mag->defined();
      const scalar_t* m = has_mag ? mag->const_data_ptr<scalar_t>() : nullptr;
      const acc_t scale = static_cast<acc_t>(scale_ptr[i]);
      at::parallel_for(0, weights[i].numel(), kGrainSize,
                       [&](int64_t begin, int64_t end) {
        if (has_mag) {
          for (int64_t j = begin; j < end; ++j) b[j] = sync_element<scalar_t, acc_t>(w[j], m[j], scale, true);
        } else {
          for (int64_t j = begin; j < end; ++j) b[j] = sync_element<scalar_t, acc_t>(w[j], w[j], scale, false);
        }
      });
    }
  });
  bump_versions(b_matrices);
}

}  // namespace soap_cuda
