// Argument checks of the perturbation ops (messages mirrored in soap_cuda/reference/perturb.py),
// node_perturb_grad's device-generic body, and the registration of the CPU kernels.
#include <ATen/core/Tensor.h>
#include <ATen/ops/mm.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <cmath>

#include "common/checks.h"
#include "perturb.h"

namespace soap_cuda {

static void check_float_or_double(const char* op, const char* arg, const at::Tensor& t) {
  SOAP_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, "soap_cuda::", op,
              ": argument '", arg, "' must be float32 or float64, got ", t.scalar_type());
}

void check_philox_normal_fill_args(const at::Tensor& noise) {
  check_float_or_double("philox_normal_fill", "noise", noise);
}

std::tuple<Activation, int64_t> check_perturbed_bias_act_args(
    const char* op, const at::Tensor& pre, const c10::optional<at::Tensor>& bias, double sigma,
    int64_t num_perturb, bool antithetic, c10::string_view activation) {
  check_float_or_double(op, "pre", pre);
  check_dim(op, "pre", pre, 2);
  SOAP_CHECK(num_perturb >= 0, "soap_cuda::", op, ": argument 'num_perturb' must be >= 0, got ",
              num_perturb);
  SOAP_CHECK(!antithetic || num_perturb % 2 == 0, "soap_cuda::", op, ": argument "
              "'num_perturb' must be even with antithetic pairs, got ", num_perturb);
  SOAP_CHECK(pre.size(0) % (num_perturb + 1) == 0, "soap_cuda::", op, ": argument 'pre' must "
              "have (num_perturb + 1) * batch rows, got ", pre.size(0), " rows for num_perturb=",
              num_perturb);
  SOAP_CHECK(std::isfinite(sigma) && sigma >= 0, "soap_cuda::", op, ": argument 'sigma' must "
              "be finite and >= 0, got ", sigma);
  if (bias.has_value() && bias->defined()) {
    SOAP_CHECK(bias->dim() == 1 && bias->size(0) == pre.size(1), "soap_cuda::", op,
                ": argument 'bias' must have shape [", pre.size(1), "] (width), got ",
                bias->sizes());
    check_same_dtype(op, "bias", *bias, "pre", pre);
    check_same_device(op, "bias", *bias, "pre", pre);
  }
  Activation act;
  if (activation == "identity") {
    act = Activation::kIdentity;
  } else if (activation == "relu") {
    act = Activation::kRelu;
  } else if (activation == "tanh") {
    act = Activation::kTanh;
  } else if (activation == "sigmoid") {
    act = Activation::kSigmoid;
  } else {
    SOAP_CHECK(false, "soap_cuda::", op, ": argument 'activation' must be one of identity, "
                "relu, tanh, sigmoid, got '", std::string(activation), "'");
  }
  return std::make_tuple(act, pre.size(0) / (num_perturb + 1));
}

void check_written_in_place(const char* op, const at::Tensor& pre,
                            const c10::optional<at::Tensor>& bias) {
  check_contiguous(op, "pre", pre);
  // A non-contiguous bias is copied before the kernel runs; a contiguous one is read in place.
  if (bias.has_value() && bias->defined() && bias->is_contiguous()) {
    SOAP_CHECK(at::get_overlap_status(*bias, pre) == at::MemOverlapStatus::No, "soap_cuda::",
                op, ": argument 'bias' must not share memory with 'pre', which is written in "
                "place");
  }
}

int64_t check_perturb_estimate_args(const char* op, const at::Tensor& losses, int64_t width,
                                    double sigma, bool antithetic) {
  check_float_or_double(op, "losses", losses);
  SOAP_CHECK(losses.dim() == 2 && losses.size(0) >= 2, "soap_cuda::", op, ": argument 'losses'"
              " must be 2-D [num_perturb + 1, batch] with num_perturb >= 1, got shape ",
              losses.sizes());
  const int64_t num_perturb = losses.size(0) - 1;
  SOAP_CHECK(!antithetic || num_perturb % 2 == 0, "soap_cuda::", op, ": argument 'losses' must "
              "have an even num_perturb with antithetic pairs, got ", num_perturb);
  SOAP_CHECK(width >= 0, "soap_cuda::", op, ": argument 'width' must be >= 0, got ", width);
  SOAP_CHECK(std::isfinite(sigma) && sigma > 0, "soap_cuda::", op, ": argument 'sigma' must "
              "be finite and > 0, got ", sigma);
  return num_perturb;
}

void check_node_perturb_grad_args(const at::Tensor& losses, const at::Tensor& input,
                                  int64_t out_features, double sigma, bool antithetic) {
  constexpr const char* op = "node_perturb_grad";
  check_perturb_estimate_args(op, losses, out_features, sigma, antithetic);
  check_float_or_double(op, "input", input);
  check_dim(op, "input", input, 2);
  SOAP_CHECK(input.size(0) == losses.size(1), "soap_cuda::node_perturb_grad: argument 'input' "
              "must have one row per example of 'losses' (", losses.size(1), "), got shape ",
              input.sizes());
  check_same_device(op, "input", input, "losses", losses);
}

std::tuple<at::Tensor, at::Tensor> node_perturb_grad(const at::Tensor& losses,
                                                     const at::Tensor& input,
                                                     int64_t out_features, double sigma,
                                                     int64_t seed, int64_t offset,
                                                     bool antithetic, double scale) {
  check_node_perturb_grad_args(losses, input, out_features, sigma, antithetic);
  static auto estimate_op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("soap_cuda::perturb_estimate", "")
          .typed<at::Tensor(const at::Tensor&, int64_t, double, int64_t, int64_t, bool, double)>();
  const at::Tensor grad_pre =
      estimate_op.call(losses.to(at::kDouble), out_features, sigma, seed, offset, antithetic, scale)
          .to(input.scalar_type());
  return std::make_tuple(at::mm(grad_pre.t(), input), grad_pre.sum(0));
}

TORCH_LIBRARY_IMPL(soap_cuda, CPU, m) {
  m.impl("philox_normal_fill", &philox_normal_fill_cpu);
  m.impl("perturbed_bias_act", &perturbed_bias_act_cpu);
  m.impl("perturbed_bias_act_", &perturbed_bias_act_cpu_);
  m.impl("perturb_estimate", &perturb_estimate_cpu);
  m.impl("node_perturb_grad", &node_perturb_grad);
}

}  // namespace soap_cuda
