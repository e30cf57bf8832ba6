// Argument checks shared by every soap_cuda op. Each message names the op and the argument, and
// says what was expected, so a user can tell which tensor of a call was wrong.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <string>

#include "message.h"

namespace soap_cuda {

inline void check_floating(const char* op, const char* arg, const at::Tensor& t) {
  SOAP_CHECK(t.is_floating_point(), "soap_cuda::", op, ": argument '", arg,
              "' must be a floating-point tensor, got ", t.scalar_type());
}

inline void check_dim(const char* op, const char* arg, const at::Tensor& t, int64_t dim) {
  SOAP_CHECK(t.dim() == dim, "soap_cuda::", op, ": argument '", arg, "' must be ", dim,
              "-D, got shape ", t.sizes());
}

inline void check_same_dtype(const char* op, const char* arg, const at::Tensor& t,
                             const char* ref_arg, const at::Tensor& ref) {
  SOAP_CHECK(t.scalar_type() == ref.scalar_type(), "soap_cuda::", op, ": argument '", arg,
              "' must have the dtype of '", ref_arg, "' (", ref.scalar_type(), "), got ",
              t.scalar_type());
}

inline void check_same_device(const char* op, const char* arg, const at::Tensor& t,
                              const char* ref_arg, const at::Tensor& ref) {
  SOAP_CHECK(t.device() == ref.device(), "soap_cuda::", op, ": argument '", arg,
              "' must be on the device of '", ref_arg, "' (", ref.device(), "), got ",
              t.device());
}

inline void check_contiguous(const char* op, const char* arg, const at::Tensor& t) {
  SOAP_CHECK(t.is_contiguous(), "soap_cuda::", op, ": argument '", arg,
              "' must be contiguous (call .contiguous() first)");
}

// After a kernel wrote t in place: bump its version counter, as ADInplaceOrView does for ATen's
// in-place ops, so that a backward which saved t earlier raises autograd's "modified by an
// inplace operation" error instead of silently using the new values.
inline void mark_written(const at::Tensor& t) { t.unsafeGetTensorImpl()->bump_version(); }

}  // namespace soap_cuda
