// CPU kernels of perturbed_bias_act and its in-place twin: out = act(pre + bias + sigma * s * xi)
// on the K-tiled batch, the noise regenerated per element from Philox (row block 0 is the clean
// pass: no noise).
#include <ATen/ops/empty_like.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "common/checks.h"
#include "perturb.h"

namespace soap_cuda {
namespace {

// Noise elements generated per call of the vectorised generator (a few rows' worth).
constexpr int64_t kNoiseChunk = 4096;

// out = act(x + bias + sigma * s * xi), row by row; out may be x itself (each element is read
// before it is written, by the same iteration).
void bias_act_into(const at::Tensor& x, const c10::optional<at::Tensor>& bias, at::Tensor& out,
                   double sigma, int64_t seed, int64_t offset, int64_t batch, bool antithetic,
                   Activation act) {
  const bool has_bias = bias.has_value() && bias->defined();
  const at::Tensor b = has_bias ? bias->contiguous() : at::Tensor();
  const int64_t rows = x.size(0), width = x.size(1);
  if (out.numel() == 0) return;
  const auto useed = static_cast<uint64_t>(seed), uoffset = static_cast<uint64_t>(offset);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "perturbed_bias_act", [&] {
    const scalar_t* in = x.data_ptr<scalar_t>();
    const scalar_t* bias_data = has_bias ? b.data_ptr<scalar_t>() : nullptr;
    scalar_t* o = out.data_ptr<scalar_t>();
    const auto sig = static_cast<scalar_t>(sigma);
    const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(width, 1));
    at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
      std::vector<double> noise;
      int64_t r = r0;
      while (r < r1) {
        const NoiseRow nr = noise_row(r, batch, width, antithetic);
        // rows r .. r_end - 1 lie in one row block: their noise is one contiguous range
        int64_t r_end = std::min(r1, (r / batch + 1) * batch);
        if (nr.perturbed) {
          r_end = std::min(r_end, r + std::max<int64_t>(1, kNoiseChunk / width));
          noise.resize(static_cast<size_t>((r_end - r) * width));
          philox::normals_block(useed, uoffset, nr.first, (r_end - r) * width, noise.data());
        }
        const int64_t n = (r_end - r) * width;
        const scalar_t* in_rows = in + r * width;
        scalar_t* out_rows = o + r * width;
        const double* xi_rows = noise.data();
        for (int64_t i = 0, j = 0; i < n; ++i, j = (j + 1 == width ? 0 : j + 1)) {
          scalar_t z = bias_data != nullptr ? in_rows[i] + bias_data[j] : in_rows[i];
          if (nr.perturbed) {
            auto xi = static_cast<scalar_t>(xi_rows[i]);
            if (nr.sign < 0) xi = -xi;
            z = z + xi * sig;
          }
          out_rows[i] = activate<scalar_t>(z, act);
        }
        r = r_end;
      }
    });
  });
}

}  // namespace

at::Tensor perturbed_bias_act_cpu(const at::Tensor& pre, const c10::optional<at::Tensor>& bias,
                                  double sigma, int64_t seed, int64_t offset, int64_t num_perturb,
                                  bool antithetic, c10::string_view activation) {
  const auto checked = check_perturbed_bias_act_args("perturbed_bias_act", pre, bias, sigma,
                                                     num_perturb, antithetic, activation);
  const at::Tensor x = pre.contiguous();
  at::Tensor out = at::empty_like(x);
  bias_act_into(x, bias, out, sigma, seed, offset, std::get<1>(checked), antithetic,
                std::get<0>(checked));
  return out;
}

void perturbed_bias_act_cpu_(const at::Tensor& pre, const c10::optional<at::Tensor>& bias,
                             double sigma, int64_t seed, int64_t offset, int64_t num_perturb,
                             bool antithetic, c10::string_view activation) {
  const auto checked = check_perturbed_bias_act_args("perturbed_bias_act_", pre, bias, sigma,
                                                     num_perturb, antithetic, activation);
  check_written_in_place("perturbed_bias_act_", pre, bias);
  at::Tensor out = pre;
  bias_act_into(pre, bias, out, sigma, seed, offset, std::get<1>(checked), antithetic,
                std::get<0>(checked));
  mark_written(pre);
}


}  // namespace soap_cuda
