// CUDA side of feedback_sync_, host code: checks, the layer table (blocks per layer from
// sync_partition.h), one launch of the kernel in feedback_sync_kernel.cu, and the registration.
#include <ATen/cuda/CUDAContextLight.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <vector>

#include "feedback_sync.h"
#include "feedback_sync_kernel.h"
#include "sync_partition.h"
#include "../common/message.h"

namespace soap_cuda {
namespace {

SyncDtype sync_dtype(at::ScalarType type) {
  switch (type) {
    case at::kFloat: return SyncDtype::kFloat;
    case at::kDouble: return SyncDtype::kDouble;
    case at::kHalf: return SyncDtype::kHalf;
    case at::kBFloat16: return SyncDtype::kBFloat16;
    default:
      SOAP_CHECK(false, "soap_cuda::feedback_sync_: argument 'weights' must be float16, "
                  "bfloat16, float32 or float64 on CUDA, got ", type);
  }
}

void feedback_sync_cuda(at::TensorList weights, at::TensorList b_matrices,
                        const c10::List<c10::optional<at::Tensor>>& magnitudes,
                        const at::Tensor& scales) {
  check_feedback_sync_args(weights, b_matrices, magnitudes, scales);
  if (weights.empty()) return;
  const c10::cuda::CUDAGuard guard(weights[0].device());
  const SyncDtype dtype = sync_dtype(weights[0].scalar_type());
  const int64_t n = static_cast<int64_t>(weights.size());

  std::vector<int64_t> numels(n);
  for (int64_t i = 0; i < n; ++i) numels[i] = weights[i].numel();
  // One resident wave of blocks (as many as fit on every SM at once), split in proportion to
  // size; each block covers kSyncUnroll vectors per thread per step.
  const int per_sm = sync_blocks_per_sm(dtype);
  const int64_t budget = int64_t{per_sm > 0 ? per_sm : 8} *
                         at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const std::vector<int64_t> first = partition_sync_blocks(
      numels, sync_vector_width(dtype) * kSyncThreads * kSyncUnroll, budget);
  const int64_t total_blocks = first[n];
  if (total_blocks == 0) return bump_versions(b_matrices);  // every layer empty
  SOAP_CHECK(total_blocks <= int64_t{0x7fffffff}, "soap_cuda::feedback_sync_: too many "
              "blocks (", total_blocks, ")");

  // Layer table: built in pinned host memory and copied on the current stream; the pinned-memory
  // allocator records the copy's event, so the host block is not reused before it completes.
  auto table_cpu = at::empty({n * static_cast<int64_t>(sizeof(SyncLayer))},
                             at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  auto* table = reinterpret_cast<SyncLayer*>(table_cpu.data_ptr<uint8_t>());
  // Scales on the CPU travel in the table; on the device, the kernel reads them there.
  const double* host_scales = scales.is_cpu() ? scales.const_data_ptr<double>() : nullptr;
  for (int64_t i = 0; i < n; ++i) {
    const c10::optional<at::Tensor> mag = magnitudes.get(i);
    table[i] = SyncLayer{weights[i].const_data_ptr(), b_matrices[i].mutable_data_ptr(),
                         (mag.has_value() && mag->defined()) ? mag->const_data_ptr() : nullptr,
                         numels[i], first[i], host_scales != nullptr ? host_scales[i] : 1.0};
  }
  auto table_dev = table_cpu.to(weights[0].device(), /*non_blocking=*/true);
  C10_CUDA_CHECK(launch_feedback_sync(
      reinterpret_cast<const SyncLayer*>(table_dev.const_data_ptr<uint8_t>()), n, total_blocks,
      host_scales != nullptr ? nullptr : scales.const_data_ptr<double>(), dtype,
      c10::cuda::getCurrentCUDAStream()));
  bump_versions(b_matrices);
}

}  // namespace

TORCH_LIBRARY_IMPL(soap_cuda, CUDA, m) {
  m.impl("feedback_sync_", &feedback_sync_cuda);
}

}  // namespace soap_cuda
