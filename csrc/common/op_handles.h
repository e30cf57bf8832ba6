// Typed dispatcher handles of the FA forward ops, looked up once per process: what their
// autograd and autocast kernels call to enter the dispatcher again below their own key.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>

#include "../fa_conv/fa_conv.h"
#include "../fa_linear/fa_linear.h"

namespace soap_cuda {

inline const c10::TypedOperatorHandle<decltype(fa_linear_forward)>& fa_linear_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("soap_cuda::fa_linear", "")
                             .typed<decltype(fa_linear_forward)>();
  return op;
}

inline const c10::TypedOperatorHandle<decltype(fa_conv_forward)>& fa_conv_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("soap_cuda::fa_conv", "")
                             .typed<decltype(fa_conv_forward)>();
  return op;
}

}  // namespace soap_cuda
