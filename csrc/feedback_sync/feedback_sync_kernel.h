// The CUDA kernel of feedback_sync_, behind a plain C++ interface: feedback_sync_kernel.cu holds
// the kernel and includes nothing of ATen (nvcc parses a .cu once per GPU architecture), and
// feedback_sync_cuda.cpp does the checks, the layer table and the registration.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace soap_cuda {

// One layer of a launch: where it is and which blocks cover it. Nothing here changes from call
// to call for the same tensors, so a table is built once and kept on the device (the plan
// cache of feedback_sync_cuda.cpp); what does change (scales, due flags, noise streams) comes
// as device arrays beside it.
struct SyncLayer {
  const void* w;
  void* b;
  const void* m;  // nullptr: no magnitude factor
  int64_t numel;
  int64_t first_block;  // this layer's blocks are first_block .. next layer's first_block - 1
};

// The per-call arrays (device pointers), one entry per layer: scales[i]; due[i] (nullptr: every
// layer); streams[3 i .. 3 i + 2] = (draw, seed, offset) (nullptr: no layer draws).
struct SyncValues {
  const double* scales;
  const bool* due;
  const int64_t* streams;
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
// 16-byte vectors each thread loads before it stores any: several loads in flight per thread is
// what brings a streaming kernel near the copy bandwidth (one at a time left it near half).
constexpr int kSyncUnroll = 4;

// How many blocks of the kernel for `dtype` fit on one multiprocessor at once (its occupancy);
// 0 if the runtime cannot say.
int sync_blocks_per_sm(SyncDtype dtype);

// One launch of total_blocks blocks over the device table `layers` (num_layers entries, sorted
// by first_block) with the per-call `values`. Returns the launch's error code.
cudaError_t launch_feedback_sync(const SyncLayer* layers, int64_t num_layers,
                                 int64_t total_blocks, SyncValues values, SyncDtype dtype,
                                 cudaStream_t stream);

}  // namespace soap_cuda
