// Whether a tensor is an ordinary dense CPU/CUDA tensor seen by eager code: the only kind whose
// data the caches and copy-on-write shortcuts of soap_cuda may touch. Fake, functional and
// functorch-wrapped tensors, meta and inference tensors, and any call made while a
// TorchDispatchMode traces (the Python key in the thread's included set) are left to the plain
// path, so that tracing sees every op it would see without the shortcut.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/DispatchKeySet.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

namespace soap_cuda {

inline bool is_plain_dense(const at::Tensor& t) {
  static const c10::DispatchKeySet wrapped({c10::DispatchKey::Python,
                                            c10::DispatchKey::PythonTLSSnapshot,
                                            c10::DispatchKey::Functionalize,
                                            c10::DispatchKey::FuncTorchBatched,
                                            c10::DispatchKey::FuncTorchGradWrapper,
                                            c10::DispatchKey::Fake});
  if (!t.defined() || t.layout() != c10::kStrided || t.is_inference() || !t.has_storage()) {
    return false;
  }
  if (!(t.is_cpu() || t.is_cuda())) return false;
  if (t.key_set().has_any(wrapped)) return false;
  return !c10::impl::tls_local_dispatch_key_set().included_.has_any(wrapped);
}

}  // namespace soap_cuda
