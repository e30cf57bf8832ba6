// CPU kernel of feedback_sync_: one multi-threaded pass per due layer (read W, read |M| or draw
// it from its Philox stream, write B). The plain loops are branch-free and the build passes
// -fno-trapping-math, so GCC vectorises the float/double loops (selects instead of branches;
// results are unchanged).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/OpMathType.h>
#include <ATen/core/List.h>

#include "feedback_sync.h"
#include "sync_element.h"
#include "../common/philox.h"

namespace soap_cuda {

// Elements per task: large enough that thread start-up is paid back (as ATen's GRAIN_SIZE).
constexpr int64_t kGrainSize = 32768;
// A drawn magnitude costs a Philox call and a Box-Muller per pair: smaller tasks pay back.
constexpr int64_t kDrawGrainSize = 4096;

void feedback_sync_cpu(at::TensorList weights, at::TensorList b_matrices,
                       const c10::List<c10::optional<at::Tensor>>& magnitudes,
                       const at::Tensor& scales, const c10::optional<at::Tensor>& due,
                       const c10::optional<at::Tensor>& streams) {
  check_feedback_sync_args(weights, b_matrices, magnitudes, scales, due, streams);
  check_sync_memory(weights, b_matrices);
  if (weights.empty()) return;
  const double* scale_ptr = scales.const_data_ptr<double>();
  const bool* due_ptr = (due.has_value() && due->defined()) ? due->const_data_ptr<bool>() : nullptr;
  const int64_t* stream_ptr =
      (streams.has_value() && streams->defined()) ? streams->const_data_ptr<int64_t>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weights[0].scalar_type(),
                                  "feedback_sync_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    for (size_t i = 0; i < weights.size(); ++i) {
      if (due_ptr != nullptr && !due_ptr[i]) continue;
      const scalar_t* w = weights[i].const_data_ptr<scalar_t>();
      scalar_t* b = b_matrices[i].mutable_data_ptr<scalar_t>();
      const c10::optional<at::Tensor> mag = magnitudes.get(i);
      const bool has_mag = mag.has_value() && mag->defined();
      const scalar_t* m = has_mag ? mag->const_data_ptr<scalar_t>() : nullptr;
      const acc_t scale = static_cast<acc_t>(scale_ptr[i]);
      if (stream_ptr != nullptr && stream_ptr[3 * i] != 0) {
        const uint64_t seed = static_cast<uint64_t>(stream_ptr[3 * i + 1]);
        const uint64_t offset = static_cast<uint64_t>(stream_ptr[3 * i + 2]);
        at::parallel_for(0, weights[i].numel(), kDrawGrainSize, [&](int64_t begin, int64_t end) {
          philox::for_each_normal(seed, offset, begin, end - begin, [&](int64_t j, double xi) {
            // the magnitude in B's dtype first, as a filled noise tensor would hold it
            b[begin + j] = sync_element<scalar_t, acc_t>(w[begin + j], static_cast<scalar_t>(xi),
                                                         scale, true);
          });
        });
        continue;
      }
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
