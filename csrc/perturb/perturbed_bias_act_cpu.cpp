// CPU kernel of perturbed_bias_act: out = act(pre + bias + sigma * s * xi) on the K-tiled batch,
// the noise regenerated per element from Philox (row block 0 is the clean pass: no noise).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "perturb.h"

namespace soap_cuda {
namespace {

at::Tensor perturbed_bias_act_cpu(const at::Tensor& pre, const c10::optional<at::Tensor>& bias,
                                  double sigma, int64_t seed, int64_t offset, int64_t num_perturb,
                                  bool antithetic, c10::string_view activation) {
  const auto checked = check_perturbed_bias_act_args(pre, bias, sigma, num_perturb, antithetic,
                                                     activation);
  const Activation act = std::get<0>(checked);
  const int64_t batch = std::get<1>(checked);
  const at::Tensor x = pre.contiguous();
  const bool has_bias = bias.has_value() && bias->defined();
  const at::Tensor b = has_bias ? bias->contiguous() : at::Tensor();
  at::Tensor out = at::empty_like(x);
  const int64_t rows = x.size(0), width = x.size(1);
  if (out.numel() == 0) return out;
  const auto useed = static_cast<uint64_t>(seed), uoffset = static_cast<uint64_t>(offset);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "perturbed_bias_act", [&] {
    const scalar_t* in = x.data_ptr<scalar_t>();
    const scalar_t* bias_data = has_bias ? b.data_ptr<scalar_t>() : nullptr;
    scalar_t* o = out.data_ptr<scalar_t>();
    const auto sig = static_cast<scalar_t>(sigma);
    const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(width, 1));
    at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const NoiseRow nr = noise_row(r, batch, width, antithetic);
        const scalar_t* row_in = in + r * width;
        scalar_t* row_out = o + r * width;
        for (int64_t j = 0; j < width; ++j) {
          row_out[j] = bias_data != nullptr ? row_in[j] + bias_data[j] : row_in[j];
        }
        if (nr.perturbed) {
          philox::for_each_normal(useed, uoffset, nr.first, width, [&](int64_t j, double xi_d) {
            auto xi = static_cast<scalar_t>(xi_d);
            if (nr.sign < 0) xi = -xi;
            row_out[j] = row_out[j] + xi * sig;
          });
        }
        for (int64_t j = 0; j < width; ++j) row_out[j] = activate<scalar_t>(row_out[j], act);
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(soap_cuda, CPU, m) { m.impl("perturbed_bias_act", &perturbed_bias_act_cpu); }

}  // namespace soap_cuda
