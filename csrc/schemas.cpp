// Defines every soap_cuda operator schema, from the single list in soap_cuda/schemas.def.
// Kernels are registered per backend in the op folders with TORCH_LIBRARY_IMPL.
#include <torch/library.h>

TORCH_LIBRARY(soap_cuda, m) {
  // Fake kernels and autograd formulas are registered from Python (soap_cuda/ops/), which
  // `import soap_cuda` always runs: the library is only ever loaded through that import.
#define SOAP_CUDA_SCHEMA(schema) m.def(schema, {at::Tag::pt2_compliant_tag});
#include "schemas.def"
#undef SOAP_CUDA_SCHEMA
}
