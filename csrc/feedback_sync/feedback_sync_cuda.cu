// CUDA kernel of feedback_sync_: all layers in one launch. blockIdx.y picks the layer,
// blocks along x stride over it with 16-byte vector loads/stores when W, B (and |M|) are all
// 16-byte aligned, then a scalar tail; a layer with any unaligned pointer takes the scalar loop.
// Bandwidth-bound: per element it reads W (and |M|) once and writes B once.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "feedback_sync.h"
#include "sync_element.h"

namespace soap_cuda {
namespace {

struct LayerArgs {
  const void* w;
  void* b;
  const void* m;  // nullptr: no magnitude factor
  int64_t numel;
};

constexpr int kThreads = 256;

template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T v[N];
};

template <typename scalar_t>
__global__ void feedback_sync_kernel(const LayerArgs* __restrict__ layers,
                                     const double* __restrict__ scales) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int N = 16 / sizeof(scalar_t);
  const LayerArgs layer = layers[blockIdx.y];
  const scalar_t* w = static_cast<const scalar_t*>(layer.w);
  scalar_t* b = static_cast<scalar_t*>(layer.b);
  const scalar_t* m = static_cast<const scalar_t*>(layer.m);
  const bool has_mag = m != nullptr;
  const acc_t scale = static_cast<acc_t>(scales[blockIdx.y]);
  const int64_t numel = layer.numel;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;

  const bool aligned = (reinterpret_cast<uintptr_t>(w) % 16 == 0) &&
                       (reinterpret_cast<uintptr_t>(b) % 16 == 0) &&
                       (!has_mag || reinterpret_cast<uintptr_t>(m) % 16 == 0);
  int64_t done = 0;
  if (aligned) {
    const int64_t num_vec = numel / N;
    for (int64_t v = tid; v < num_vec; v += stride) {
      const auto wv = reinterpret_cast<const Vec<scalar_t, N>*>(w)[v];
      Vec<scalar_t, N> mv = wv;
      if (has_mag) mv = reinterpret_cast<const Vec<scalar_t, N>*>(m)[v];
      Vec<scalar_t, N> out;
#pragma unroll
      for (int k = 0; k < N; ++k) {
        out.v[k] = sync_element<scalar_t, acc_t>(wv.v[k], mv.v[k], scale, has_mag);
      }
      reinterpret_cast<Vec<scalar_t, N>*>(b)[v] = out;
    }
    done = num_vec * N;
  }
  for (int64_t j = done + tid; j < numel; j += stride) {  // tail, or everything if unaligned
    b[j] = sync_element<scalar_t, acc_t>(w[j], has_mag ? m[j] : w[j], scale, has_mag);
  }
}

void feedback_sync_cuda(at::TensorList weights, at::TensorList b_matrices,
                        const c10::List<c10::optional<at::Tensor>>& magnitudes,
                        const at::Tensor& scales) {
  check_feedback_sync_args(weights, b_matrices, magnitudes, scales);
  if (weights.empty()) return;
  const c10::cuda::CUDAGuard guard(weights[0].device());
  const int64_t n = static_cast<int64_t>(weights.size());
  TORCH_CHECK(n <= 65535, "soap_cuda::feedback_sync_: at most 65535 layers per call, got ", n);

  // Layer table: built in pinned host memory and copied on the current stream; the pinned-memory
  // allocator records the copy's event, so the host block is not reused before it completes.
  auto table_cpu = at::empty({n * static_cast<int64_t>(sizeof(LayerArgs))},
                             at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  auto* table = reinterpret_cast<LayerArgs*>(table_cpu.data_ptr<uint8_t>());
  int64_t max_numel = 0;
  for (int64_t i = 0; i < n; ++i) {
    const c10::optional<at::Tensor> mag = magnitudes.get(i);
    table[i] = LayerArgs{weights[i].const_data_ptr(), b_matrices[i].mutable_data_ptr(),
                         (mag.has_value() && mag->defined()) ? mag->const_data_ptr() : nullptr,
                         weights[i].numel()};
    max_numel = std::max(max_numel, weights[i].numel());
  }
  if (max_numel == 0) return;
  auto table_dev = table_cpu.to(weights[0].device(), /*non_blocking=*/true);

  const auto stream = at::cuda::getCurrentCUDAStream();
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weights[0].scalar_type(),
                                  "feedback_sync_cuda", [&] {
    constexpr int64_t N = 16 / sizeof(scalar_t);
    const int64_t vec_blocks = (max_numel / N + kThreads - 1) / kThreads;
    // Enough blocks to fill the GPU (split across the layers), never more than the work needs.
    const int64_t wanted = std::max<int64_t>(1, (int64_t(sms) * 8 + n - 1) / n);
    const int64_t blocks_x = std::max<int64_t>(1, std::min<int64_t>({vec_blocks, wanted, 65535}));
    const dim3 grid(static_cast<unsigned>(blocks_x), static_cast<unsigned>(n));
    feedback_sync_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(
        reinterpret_cast<const LayerArgs*>(table_dev.const_data_ptr<uint8_t>()),
        scales.const_data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(soap_cuda, CUDA, m) {
  m.impl("feedback_sync_", &feedback_sync_cuda);
}

}  // namespace soap_cuda
