// The CUDA kernel of feedback_sync_, behind a plain C++ interface: feedback_sync_kernel.cu holds
// the kernel and includes nothing of ATen (nvcc parses a .cu once per GPU architecture), and
// feedback_sync_cuda.cpp does the checks, the layer table and the registration.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace soap_cuda {

struct SyncLayer {
  const void* w;
  void* b;
  const void* m;  // nullptr: no magnitude factor
  int64_t numel;
  int64_t first_block;  // this layer's blocks are first_block .. next layer's first_block - 1
};

enum class SyncDtype : int { kFloat, kDouble, kHalf, kBFloat16 };

// Elements each thread handles per vector step (16-byte vectors).
inline int64_t sync_vector_width(SyncDtype dtype) {
  switch (dtype) {
    case SyncDtype::kDouble: return 2;
    case SyncDtype::kFloat: return 4;
    default: return 8;
  }
}

constexpr int kSyncThreads = 256;

// One launch of total_blocks blocks over the device table `layers` (num_layers entries, sorted
// by first_block); returns the launch's error code.
cudaError_t launch_feedback_sync(const SyncLayer* layers, int64_t num_layers,
                                 int64_t total_blocks, const double* scales, SyncDtype dtype,
                                 cudaStream_t stream);

}  // namespace soap_cuda
