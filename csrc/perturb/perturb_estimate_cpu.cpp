// CPU kernels of perturb_estimate (the node/weight-perturbation estimate of dL/d(perturbed
// quantity), noise regenerated, float64 accumulation) and node_perturb_grad (estimate + GEMM).
#include <ATen/ops/empty.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "perturb.h"

namespace soap_cuda {

at::Tensor perturb_estimate_cpu(const at::Tensor& losses, int64_t width, double sigma,
                                int64_t seed, int64_t offset, bool antithetic, double scale) {
  const int64_t num_perturb =
      check_perturb_estimate_args("perturb_estimate", losses, width, sigma, antithetic);
  const at::Tensor l64 = losses.to(at::kDouble).contiguous();
  const int64_t rows = losses.size(1);
  const int64_t slots = num_slots(num_perturb, antithetic);
  at::Tensor out = at::empty({rows, width}, losses.options());
  if (out.numel() == 0) return out;
  const auto useed = static_cast<uint64_t>(seed), uoffset = static_cast<uint64_t>(offset);
  const double factor = scale / (sigma * static_cast<double>(slots));
  const int64_t chunks = num_estimate_chunks(slots);
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "perturb_estimate", [&] {
    const double* l = l64.data_ptr<double>();
    scalar_t* o = out.data_ptr<scalar_t>();
    const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(width * slots, 1));
    at::parallel_for(0, rows, grain, [&](int64_t b0, int64_t b1) {
      const auto w = static_cast<size_t>(width);
      std::vector<double> total(w), acc(w), noise(w);
      for (int64_t b = b0; b < b1; ++b) {
        // the chunked order of perturb_math.h (the CUDA kernel's, so the bits agree)
        for (int64_t c = 0; c < chunks; ++c) {
          std::fill(acc.begin(), acc.end(), 0.0);
          for (int64_t m = c * kEstimateChunk; m < std::min(slots, (c + 1) * kEstimateChunk); ++m) {
            const double coef = slot_coefficient(l, rows, m, b, antithetic);
            const int64_t first = (m * rows + b) * width;
            philox::normals_block(useed, uoffset, first, width, noise.data());
            for (int64_t j = 0; j < width; ++j) acc[j] += coef * noise[j];
          }
          if (c == 0) {
            total.swap(acc);
          } else {
            for (int64_t j = 0; j < width; ++j) total[j] += acc[j];
          }
        }
        for (int64_t j = 0; j < width; ++j) {
          o[b * width + j] = static_cast<scalar_t>(total[j] * factor);
        }
      }
    });
  });
  return out;
}


}  // namespace soap_cuda
