// CPU kernel of philox_normal_fill: noise element i (row-major flat index) of stream
// (seed, offset), exactly as the CUDA kernel and the Python reference compute it.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "perturb.h"

namespace soap_cuda {
namespace {

void philox_normal_fill_cpu(const at::Tensor& noise, int64_t seed, int64_t offset) {
  check_philox_normal_fill_args(noise);
  at::Tensor out = noise.is_contiguous() ? noise : at::empty_like(noise, at::MemoryFormat::Contiguous);
  const int64_t n = out.numel();
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "philox_normal_fill", [&] {
    scalar_t* data = out.data_ptr<scalar_t>();
    at::parallel_for(0, n, 4096, [&](int64_t begin, int64_t end) {
      philox::for_each_normal(static_cast<uint64_t>(seed), static_cast<uint64_t>(offset), begin,
                              end - begin, [&](int64_t j, double xi) {
                                data[begin + j] = static_cast<scalar_t>(xi);
                              });
    });
  });
  if (!out.is_same(noise)) noise.copy_(out);
}

}  // namespace

TORCH_LIBRARY_IMPL(soap_cuda, CPU, m) { m.impl("philox_normal_fill", &philox_normal_fill_cpu); }

}  // namespace soap_cuda
