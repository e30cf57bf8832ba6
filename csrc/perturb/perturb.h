// Batched perturbation ops: Philox noise, the fused noisy bias + activation of a K-tiled batch,
// and the node-perturbation estimates that regenerate the noise instead of storing it.
// The CPU (perturb_*_cpu.cpp) and CUDA (perturb_kernels.cu) kernels share the argument checks
// declared here and the element math of perturb_math.h.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>
#include <c10/util/string_view.h>

#include <string>
#include <tuple>

#include "perturb_math.h"

namespace soap_cuda {

namespace philox {
// Host: noise elements first .. first + count - 1 of stream (seed, offset) into out[0 .. count),
// the values of philox::normal, computed in a vectorised loop (philox_block_cpu.cpp).
void normals_block(uint64_t seed, uint64_t offset, int64_t first, int64_t count, double* out);
}  // namespace philox

void check_philox_normal_fill_args(const at::Tensor& noise);

// Checks the arguments of `op` (perturbed_bias_act or its in-place twin); returns the
// activation and the per-pass batch size.
std::tuple<Activation, int64_t> check_perturbed_bias_act_args(
    const char* op, const at::Tensor& pre, const c10::optional<at::Tensor>& bias, double sigma,
    int64_t num_perturb, bool antithetic, c10::string_view activation);

// perturbed_bias_act_ writes its result over 'pre': it must be contiguous, and a bias read
// during the write must not lie in it.
void check_written_in_place(const char* op, const at::Tensor& pre,
                            const c10::optional<at::Tensor>& bias);

// losses [K+1, rows]; returns K.
int64_t check_perturb_estimate_args(const char* op, const at::Tensor& losses, int64_t width,
                                    double sigma, bool antithetic);

void check_node_perturb_grad_args(const at::Tensor& losses, const at::Tensor& input,
                                  int64_t out_features, double sigma, bool antithetic);

// Device-generic: the estimate (through the dispatcher, so each device runs its own kernel) in
// float64, cast to the input's dtype, then one GEMM with the input.
std::tuple<at::Tensor, at::Tensor> node_perturb_grad(const at::Tensor& losses,
                                                     const at::Tensor& input,
                                                     int64_t out_features, double sigma,
                                                     int64_t seed, int64_t offset,
                                                     bool antithetic, double scale);

// CPU kernels (perturb_*_cpu.cpp, philox_normal_fill_cpu.cpp), registered in perturb.cpp so
// that one translation unit, not four, parses the registration headers.
void philox_normal_fill_cpu(const at::Tensor& noise, int64_t seed, int64_t offset);
at::Tensor perturbed_bias_act_cpu(const at::Tensor& pre, const c10::optional<at::Tensor>& bias,
                                  double sigma, int64_t seed, int64_t offset, int64_t num_perturb,
                                  bool antithetic, c10::string_view activation);
void perturbed_bias_act_cpu_(const at::Tensor& pre, const c10::optional<at::Tensor>& bias,
                             double sigma, int64_t seed, int64_t offset, int64_t num_perturb,
                             bool antithetic, c10::string_view activation);
at::Tensor perturb_estimate_cpu(const at::Tensor& losses, int64_t width, double sigma,
                                int64_t seed, int64_t offset, bool antithetic, double scale);

}  // namespace soap_cuda
