// CPU kernel of philox_normal_fill: noise element i (row-major flat index) of stream
// (seed, offset), exactly as the CUDA kernel and the Python reference compute it.
#include <ATen/ops/empty_like.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <type_traits>

#include "perturb.h"

namespace soap_cuda {

void philox_normal_fill_cpu(const at::Tensor& noise, int64_t seed, int64_t offset) {
  check_philox_normal_fill_args(noise);
  at::Tensor out = noise.is_contiguous() ? noise : at::empty_like(noise, at::MemoryFormat::Contiguous);
  const int64_t n = out.numel();
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "philox_normal_fill", [&] {
    scalar_t* data = out.data_ptr<scalar_t>();
    at::parallel_for(0, n, 8192, [&](int64_t begin, int64_t end) {
      if constexpr (std::is_same_v<scalar_t, double>) {
        philox::normals_block(static_cast<uint64_t>(seed), static_cast<uint64_t>(offset), begin,
                              end - begin, reinterpret_cast<double*>(data + begin));
      } else {
        constexpr int64_t kChunk = 4096;
        double buf[kChunk];
        for (int64_t i = begin; i < end; i += kChunk) {
          const int64_t len = std::min(kChunk, end - i);
          philox::normals_block(static_cast<uint64_t>(seed), static_cast<uint64_t>(offset), i,
                                len, buf);
          for (int64_t j = 0; j < len; ++j) data[i + j] = static_cast<scalar_t>(buf[j]);
        }
      }
    });
  });
  if (!out.is_same(noise)) noise.copy_(out);
}


}  // namespace soap_cuda
