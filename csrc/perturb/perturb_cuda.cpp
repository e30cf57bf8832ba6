// CUDA side of the perturbation ops, host code: checks, allocation, dtype dispatch, the launches
// of the kernels in perturb_kernels.cu on the input's device and current stream, and the
// registration.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "common/checks.h"
#include "perturb.h"
#include "perturb_kernels.h"

namespace soap_cuda {
namespace {

void philox_normal_fill_cuda(const at::Tensor& noise, int64_t seed, int64_t offset) {
  check_philox_normal_fill_args(noise);
  const c10::cuda::CUDAGuard guard(noise.device());
  at::Tensor out = noise.is_contiguous() ? noise : at::empty_like(noise, at::MemoryFormat::Contiguous);
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "philox_normal_fill_cuda", [&] {
    C10_CUDA_CHECK(launch_philox_normal_fill<scalar_t>(
        out.data_ptr<scalar_t>(), out.numel(), static_cast<uint64_t>(seed),
        static_cast<uint64_t>(offset), c10::cuda::getCurrentCUDAStream()));
  });
  if (!out.is_same(noise)) noise.copy_(out);
}

// out = act(x + bias + sigma * s * xi); out may be x itself.
void bias_act_into(const at::Tensor& x, const c10::optional<at::Tensor>& bias, at::Tensor& out,
                   double sigma, int64_t seed, int64_t offset, int64_t num_perturb,
                   bool antithetic, const std::tuple<Activation, int64_t>& checked) {
  const bool has_bias = bias.has_value() && bias->defined();
  const at::Tensor b = has_bias ? bias->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "perturbed_bias_act_cuda", [&] {
    C10_CUDA_CHECK(launch_perturbed_bias_act<scalar_t>(
        x.data_ptr<scalar_t>(), has_bias ? b.data_ptr<scalar_t>() : nullptr,
        out.data_ptr<scalar_t>(), std::get<1>(checked), x.size(1), num_perturb, antithetic,
        static_cast<scalar_t>(sigma), static_cast<uint64_t>(seed), static_cast<uint64_t>(offset),
        std::get<0>(checked), c10::cuda::getCurrentCUDAStream()));
  });
}

at::Tensor perturbed_bias_act_cuda(const at::Tensor& pre, const c10::optional<at::Tensor>& bias,
                                   double sigma, int64_t seed, int64_t offset, int64_t num_perturb,
                                   bool antithetic, c10::string_view activation) {
  const auto checked = check_perturbed_bias_act_args("perturbed_bias_act", pre, bias, sigma,
                                                     num_perturb, antithetic, activation);
  const c10::cuda::CUDAGuard guard(pre.device());
  const at::Tensor x = pre.contiguous();
  at::Tensor out = at::empty_like(x);
  bias_act_into(x, bias, out, sigma, seed, offset, num_perturb, antithetic, checked);
  return out;
}

void perturbed_bias_act_cuda_(const at::Tensor& pre, const c10::optional<at::Tensor>& bias,
                              double sigma, int64_t seed, int64_t offset, int64_t num_perturb,
                              bool antithetic, c10::string_view activation) {
  const auto checked = check_perturbed_bias_act_args("perturbed_bias_act_", pre, bias, sigma,
                                                     num_perturb, antithetic, activation);
  check_written_in_place("perturbed_bias_act_", pre, bias);
  const c10::cuda::CUDAGuard guard(pre.device());
  at::Tensor out = pre;
  bias_act_into(pre, bias, out, sigma, seed, offset, num_perturb, antithetic, checked);
  mark_written(pre);
}

at::Tensor perturb_estimate_cuda(const at::Tensor& losses, int64_t width, double sigma,
                                 int64_t seed, int64_t offset, bool antithetic, double scale) {
  const int64_t num_perturb =
      check_perturb_estimate_args("perturb_estimate", losses, width, sigma, antithetic);
  const c10::cuda::CUDAGuard guard(losses.device());
  const at::Tensor l64 = losses.to(at::kDouble).contiguous();
  const int64_t rows = losses.size(1);
  const int64_t slots = num_slots(num_perturb, antithetic);
  at::Tensor out = at::empty({rows, width}, losses.options());
  const int64_t chunks = num_estimate_chunks(slots);
  // the chunks' partial sums, when there are several (a few rows x width x K/8 doubles)
  const at::Tensor partial = chunks > 1 && out.numel() > 0
      ? at::empty({chunks, rows, width}, l64.options()) : at::Tensor();
  const double factor = scale / (sigma * static_cast<double>(slots));
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "perturb_estimate_cuda", [&] {
    C10_CUDA_CHECK(launch_perturb_estimate<scalar_t>(
        l64.data_ptr<double>(), out.data_ptr<scalar_t>(),
        partial.defined() ? partial.data_ptr<double>() : nullptr, rows, width, slots, factor,
        static_cast<uint64_t>(seed), static_cast<uint64_t>(offset), antithetic,
        c10::cuda::getCurrentCUDAStream()));
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> node_perturb_grad_cuda(const at::Tensor& losses,
                                                          const at::Tensor& input,
                                                          int64_t out_features, double sigma,
                                                          int64_t seed, int64_t offset,
                                                          bool antithetic, double scale) {
  const c10::cuda::OptionalCUDAGuard guard(input.device());
  return node_perturb_grad(losses, input, out_features, sigma, seed, offset, antithetic, scale);
}

}  // namespace

TORCH_LIBRARY_IMPL(soap_cuda, CUDA, m) {
  m.impl("philox_normal_fill", &philox_normal_fill_cuda);
  m.impl("perturbed_bias_act", &perturbed_bias_act_cuda);
  m.impl("perturbed_bias_act_", &perturbed_bias_act_cuda_);
  m.impl("perturb_estimate", &perturb_estimate_cuda);
  m.impl("node_perturb_grad", &node_perturb_grad_cuda);
}

}  // namespace soap_cuda
