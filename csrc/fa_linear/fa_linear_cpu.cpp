// CPU kernels of fa_linear: the device-generic bodies, registered for CPU tensors.
#include <torch/library.h>

#include "fa_linear.h"

TORCH_LIBRARY_IMPL(soap_cuda, CPU, m) {
  m.impl("fa_linear", &soap_cuda::fa_linear_forward);
  m.impl("fa_linear_backward", &soap_cuda::fa_linear_backward);
}
