// Autocast kernels of fa_linear and fa_conv (AutocastCPU, AutocastCUDA), as ATen registers its
// own for linear and conv: the operands go to the autocast dtype (float64 ones stay), autocast
// is excluded for the rest of the call (so the kernels' own GEMMs and convolutions run in that
// dtype instead of being recast), and the op is called again below autocast. The casts are
// differentiable: fp32 master weights get fp32 gradients. B's cast comes from feedback_cast's
// cache (cast.h). No kernel is CUDA code: both keys are registered in every build.
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include "../common/op_handles.h"
#include "cast.h"

namespace at::autocast {  // from ATen/autocast_mode.h (see cast.cpp)
TORCH_API at::ScalarType get_autocast_dtype(at::DeviceType device_type);
}  // namespace at::autocast

namespace soap_cuda {
namespace {

constexpr c10::DispatchKey autocast_key(c10::DeviceType device) {
  return device == c10::DeviceType::CUDA ? c10::DispatchKey::AutocastCUDA
                                         : c10::DispatchKey::AutocastCPU;
}

template <c10::DeviceType device>
at::Tensor fa_linear_autocast(const at::Tensor& input, const at::Tensor& weight,
                              const c10::optional<at::Tensor>& bias, const at::Tensor& b_matrix) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(autocast_key(device));
  const at::ScalarType to = at::autocast::get_autocast_dtype(device);
  return fa_linear_op().call(autocast_cast(input, to, device), autocast_cast(weight, to, device),
                 autocast_cast(bias, to, device), feedback_cast(b_matrix, to, device));
}

template <c10::DeviceType device>
at::Tensor fa_conv_autocast(const at::Tensor& input, const at::Tensor& weight,
                            const c10::optional<at::Tensor>& bias, const at::Tensor& b_matrix,
                            at::IntArrayRef stride, at::IntArrayRef padding,
                            at::IntArrayRef dilation, int64_t groups) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(autocast_key(device));
  const at::ScalarType to = at::autocast::get_autocast_dtype(device);
  return fa_conv_op().call(autocast_cast(input, to, device), autocast_cast(weight, to, device),
                 autocast_cast(bias, to, device), feedback_cast(b_matrix, to, device), stride,
                 padding, dilation, groups);
}

}  // namespace

TORCH_LIBRARY_IMPL(soap_cuda, AutocastCPU, m) {
  m.impl("fa_linear", &fa_linear_autocast<c10::DeviceType::CPU>);
  m.impl("fa_conv", &fa_conv_autocast<c10::DeviceType::CPU>);
}

TORCH_LIBRARY_IMPL(soap_cuda, AutocastCUDA, m) {
  m.impl("fa_linear", &fa_linear_autocast<c10::DeviceType::CUDA>);
  m.impl("fa_conv", &fa_conv_autocast<c10::DeviceType::CUDA>);
}

}  // namespace soap_cuda
