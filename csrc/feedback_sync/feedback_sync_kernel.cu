// CUDA kernel of feedback_sync_: all layers in one launch. Each layer owns a contiguous range of
// blocks, sized by sync_partition.h (in proportion to its size); a block finds its layer by
// binary search in the layer table, then strides over it with 16-byte vector loads/stores when
// W, B (and |M|) are all 16-byte aligned, kSyncUnroll vectors per thread per step (all loads
// issued before the first store), then a scalar tail; a layer with any unaligned pointer takes
// the scalar loop. Bandwidth-bound: per element it reads W (and |M|) once and writes B once.
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "feedback_sync_kernel.h"
#include "sync_element.h"
#include "../common/philox.h"

namespace soap_cuda {
namespace {

template <typename T> struct AccumulateType { using type = T; };
template <> struct AccumulateType<c10::Half> { using type = float; };
template <> struct AccumulateType<c10::BFloat16> { using type = float; };

template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T v[N];
};

__device__ int64_t layer_of_block(const SyncLayer* layers, int64_t num_layers, int64_t block) {
  int64_t lo = 0, hi = num_layers - 1;  // the last layer whose first block is <= block
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (layers[mid].first_block <= block) lo = mid; else hi = mid - 1;
  }
  return lo;
}

template <typename scalar_t>
__global__ void feedback_sync_kernel(const SyncLayer* __restrict__ layers, int64_t num_layers,
                                     SyncValues values) {
  using acc_t = typename AccumulateType<scalar_t>::type;
  constexpr int N = 16 / sizeof(scalar_t);
  const int64_t index = layer_of_block(layers, num_layers, blockIdx.x);
  // a layer not due this step: its blocks leave at once (a replayed graph launches them anyway)
  if (values.due != nullptr && !values.due[index]) return;
  const SyncLayer layer = layers[index];
  const int64_t end_block = index + 1 < num_layers ? layers[index + 1].first_block
                                                   : static_cast<int64_t>(gridDim.x);
  const scalar_t* w = static_cast<const scalar_t*>(layer.w);
  scalar_t* b = static_cast<scalar_t*>(layer.b);
  const scalar_t* m = static_cast<const scalar_t*>(layer.m);
  const bool has_mag = m != nullptr;
  const acc_t scale = static_cast<acc_t>(values.scales[index]);
  const int64_t numel = layer.numel;
  const int64_t stride = (end_block - layer.first_block) * blockDim.x;
  const int64_t tid = (static_cast<int64_t>(blockIdx.x) - layer.first_block) * blockDim.x +
                      threadIdx.x;

  if (values.streams != nullptr && values.streams[3 * index] != 0) {
    // |M| drawn here, element j of Philox stream (seed, offset), in B's dtype first as a filled
    // noise tensor would hold it: the CPU kernel's values, bit for bit. Rare (a sync of
    // random_sign), so a plain strided loop.
    const uint64_t seed = static_cast<uint64_t>(values.streams[3 * index + 1]);
    const uint64_t offset = static_cast<uint64_t>(values.streams[3 * index + 2]);
    for (int64_t j = tid; j < numel; j += stride) {
      const scalar_t m_j = static_cast<scalar_t>(philox::normal(seed, offset, j));
      b[j] = sync_element<scalar_t, acc_t>(w[j], m_j, scale, true);
    }
    return;
  }

  const bool aligned = (reinterpret_cast<uintptr_t>(w) % 16 == 0) &&
                       (reinterpret_cast<uintptr_t>(b) % 16 == 0) &&
                       (!has_mag || reinterpret_cast<uintptr_t>(m) % 16 == 0);
  int64_t done = 0;
  if (aligned) {
    using V = Vec<scalar_t, N>;
    const V* wv = reinterpret_cast<const V*>(w);
    const V* mv = reinterpret_cast<const V*>(m);
    V* bv = reinterpret_cast<V*>(b);
    const int64_t num_vec = numel / N;
    // Step u of a thread touches vector base + u * stride: each of the kSyncUnroll loads is
    // coalesced across the warp, and all of them are in flight together.
    for (int64_t base = tid; base < num_vec; base += kSyncUnroll * stride) {
      V wr[kSyncUnroll], mr[kSyncUnroll];
#pragma unroll
      for (int u = 0; u < kSyncUnroll; ++u) {
        const int64_t v = base + u * stride;
        if (v < num_vec) {
          wr[u] = wv[v];
          mr[u] = has_mag ? mv[v] : wr[u];
        }
      }
#pragma unroll
      for (int u = 0; u < kSyncUnroll; ++u) {
        const int64_t v = base + u * stride;
        if (v < num_vec) {
          V out;
#pragma unroll
          for (int k = 0; k < N; ++k) {
            out.v[k] = sync_element<scalar_t, acc_t>(wr[u].v[k], mr[u].v[k], scale, has_mag);
          }
          bv[v] = out;
        }
      }
    }
    done = num_vec * N;
  }
  for (int64_t j = done + tid; j < numel; j += stride) {  // tail, or everything if unaligned
    b[j] = sync_element<scalar_t, acc_t>(w[j], has_mag ? m[j] : w[j], scale, has_mag);
  }
}

template <typename scalar_t>
cudaError_t launch(const SyncLayer* layers, int64_t num_layers, int64_t total_blocks,
                   SyncValues values, cudaStream_t stream) {
  feedback_sync_kernel<scalar_t><<<static_cast<unsigned>(total_blocks), kSyncThreads, 0,
                                   stream>>>(layers, num_layers, values);
  return cudaGetLastError();
}

template <typename scalar_t>
int blocks_per_sm() {
  int blocks = 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, feedback_sync_kernel<scalar_t>,
                                                    kSyncThreads, 0) != cudaSuccess) {
    cudaGetLastError();  // clear it: the caller falls back to a fixed count
    return 0;
  }
  return blocks;
}

}  // namespace

int sync_blocks_per_sm(SyncDtype dtype) {
  switch (dtype) {
    case SyncDtype::kFloat: return blocks_per_sm<float>();
    case SyncDtype::kDouble: return blocks_per_sm<double>();
    case SyncDtype::kHalf: return blocks_per_sm<c10::Half>();
    case SyncDtype::kBFloat16: return blocks_per_sm<c10::BFloat16>();
  }
  return 0;
}

cudaError_t launch_feedback_sync(const SyncLayer* layers, int64_t num_layers,
                                 int64_t total_blocks, SyncValues values, SyncDtype dtype,
                                 cudaStream_t stream) {
  switch (dtype) {
    case SyncDtype::kFloat: return launch<float>(layers, num_layers, total_blocks, values, stream);
    case SyncDtype::kDouble: return launch<double>(layers, num_layers, total_blocks, values, stream);
    case SyncDtype::kHalf:
      return launch<c10::Half>(layers, num_layers, total_blocks, values, stream);
    case SyncDtype::kBFloat16:
      return launch<c10::BFloat16>(layers, num_layers, total_blocks, values, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace soap_cuda
