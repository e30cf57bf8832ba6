// CUDA kernels of the perturbation ops. Same element math as the CPU kernels (perturb_math.h,
// common/philox.h); run on the input's device and current stream, 64-bit indices throughout.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>

#include "perturb.h"

namespace soap_cuda {
namespace {

constexpr int kThreads = 256;

// Explicitly rounded add and multiply: nvcc would otherwise contract `z + xi * sigma` and
// `acc + coef * xi` into FMAs, which the CPU kernels (and the Python reference) do not use.
__device__ __forceinline__ float add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double add_rn(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }

// Grid for a grid-stride loop over n elements (n > 0).
unsigned int grid_for(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned int>(std::min<int64_t>(blocks, int64_t{1} << 20));
}

template <typename scalar_t>
__global__ void philox_normal_fill_kernel(scalar_t* __restrict__ data, int64_t n, uint64_t seed,
                                          uint64_t offset) {
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    data[i] = static_cast<scalar_t>(philox::normal(seed, offset, static_cast<uint64_t>(i)));
  }
}

template <typename scalar_t>
// pre and out may be one buffer (perturbed_bias_act_): each thread reads element i before
// writing it, and no other thread touches it, so neither pointer is __restrict__.
__global__ void perturbed_bias_act_kernel(const scalar_t* pre,
                                          const scalar_t* __restrict__ bias,
                                          scalar_t* out, int64_t rows, int64_t width,
                                          int64_t batch, scalar_t sigma, uint64_t seed,
                                          uint64_t offset, bool antithetic, Activation act) {
  const int64_t n = rows * width;
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    const int64_t r = i / width, j = i - r * width;
    scalar_t z = pre[i];
    if (bias != nullptr) z = add_rn(z, bias[j]);
    const NoiseRow nr = noise_row(r, batch, width, antithetic);
    if (nr.perturbed) {
      auto xi = static_cast<scalar_t>(philox::normal(seed, offset,
                                                     static_cast<uint64_t>(nr.first + j)));
      if (nr.sign < 0) xi = -xi;
      z = add_rn(z, mul_rn(xi, sigma));
    }
    out[i] = activate<scalar_t>(z, act);
  }
}

// One thread per (example b, unit j): accumulates coef_m * xi_m over the slots in float64.
template <typename scalar_t>
__global__ void perturb_estimate_kernel(const double* __restrict__ losses,
                                        scalar_t* __restrict__ out, int64_t rows, int64_t width,
                                        int64_t slots, double factor, uint64_t seed,
                                        uint64_t offset, bool antithetic) {
  const int64_t n = rows * width;
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    const int64_t b = i / width, j = i - b * width;
    double acc = 0.0;
    for (int64_t m = 0; m < slots; ++m) {
      const double coef = slot_coefficient(losses, rows, m, b, antithetic);
      acc = add_rn(acc, mul_rn(coef, philox::normal(seed, offset,
                                                    static_cast<uint64_t>((m * rows + b) * width + j))));
    }
    out[i] = static_cast<scalar_t>(mul_rn(acc, factor));
  }
}

void philox_normal_fill_cuda(const at::Tensor& noise, int64_t seed, int64_t offset) {
  check_philox_normal_fill_args(noise);
  const c10::cuda::CUDAGuard guard(noise.device());
  at::Tensor out = noise.is_contiguous() ? noise : at::empty_like(noise, at::MemoryFormat::Contiguous);
  const int64_t n = out.numel();
  if (n > 0) {
    auto stream = at::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "philox_normal_fill_cuda", [&] {
      philox_normal_fill_kernel<scalar_t><<<grid_for(n), kThreads, 0, stream>>>(
          out.data_ptr<scalar_t>(), n, static_cast<uint64_t>(seed), static_cast<uint64_t>(offset));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  if (!out.is_same(noise)) noise.copy_(out);
}

void launch_bias_act(const at::Tensor& x, const c10::optional<at::Tensor>& bias, at::Tensor& out,
                     double sigma, int64_t seed, int64_t offset, int64_t batch, bool antithetic,
                     Activation act) {
  const bool has_bias = bias.has_value() && bias->defined();
  const at::Tensor b = has_bias ? bias->contiguous() : at::Tensor();
  const int64_t rows = x.size(0), width = x.size(1);
  const int64_t n = rows * width;
  if (n == 0) return;
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "perturbed_bias_act_cuda", [&] {
    perturbed_bias_act_kernel<scalar_t><<<grid_for(n), kThreads, 0, stream>>>(
        x.data_ptr<scalar_t>(), has_bias ? b.data_ptr<scalar_t>() : nullptr,
        out.data_ptr<scalar_t>(), rows, width, batch, static_cast<scalar_t>(sigma),
        static_cast<uint64_t>(seed), static_cast<uint64_t>(offset), antithetic, act);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
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
  launch_bias_act(x, bias, out, sigma, seed, offset, std::get<1>(checked), antithetic,
                  std::get<0>(checked));
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
  launch_bias_act(pre, bias, out, sigma, seed, offset, std::get<1>(checked), antithetic,
                  std::get<0>(checked));
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
  const int64_t n = rows * width;
  if (n == 0) return out;
  const double factor = scale / (sigma * static_cast<double>(slots));
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "perturb_estimate_cuda", [&] {
    perturb_estimate_kernel<scalar_t><<<grid_for(n), kThreads, 0, stream>>>(
        l64.data_ptr<double>(), out.data_ptr<scalar_t>(), rows, width, slots, factor,
        static_cast<uint64_t>(seed), static_cast<uint64_t>(offset), antithetic);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
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
