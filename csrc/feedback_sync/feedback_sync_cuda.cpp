// CUDA side of feedback_sync_, host code: checks, the launch plan (the layer table with blocks
// per layer from sync_partition.h, built once per set of tensors and kept on the device), one
// launch of the kernel in feedback_sync_kernel.cu, and the registration.
#include <ATen/cuda/CUDAContextLight.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
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

// A launch plan: the layer table on the device and its grid. Keyed by what the table holds
// (pointers, sizes, dtype, device), so a plan is valid for any call with the same key: a call
// with the same tensors (a model's every sync, a captured graph's replays) copies nothing and
// rechecks no overlap.
struct SyncPlan {
  c10::DeviceIndex device;
  SyncDtype dtype;
  std::vector<SyncLayer> layers;
  at::Tensor table;  // the layers on the device
  int64_t total_blocks;
  bool captured;  // used while a CUDA graph was captured: kept as long as the process lives
};

bool same_layers(const std::vector<SyncLayer>& a, const std::vector<SyncLayer>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i].w != b[i].w || a[i].b != b[i].b || a[i].m != b[i].m || a[i].numel != b[i].numel) {
      return false;
    }
  }
  return true;
}

// A graph captured with a plan reads its table at every replay: a plan used during a capture is
// never evicted; other plans go first in, first out beyond kMaxPlans.
constexpr size_t kMaxPlans = 64;

// What a launch needs of a plan, held by the caller (the cache may evict the plan meanwhile).
struct PlanUse {
  at::Tensor table;
  int64_t total_blocks;
};

class PlanCache {
 public:
  // The plan for these layers (first_block unset in `layers`), built when new.
  PlanUse get(c10::DeviceIndex device, SyncDtype dtype, std::vector<SyncLayer> layers,
                      at::TensorList weights, at::TensorList b_matrices, bool capturing) {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto& plan : plans_) {
      if (plan->device == device && plan->dtype == dtype && same_layers(plan->layers, layers)) {
        plan->captured = plan->captured || capturing;
        return PlanUse{plan->table, plan->total_blocks};
      }
    }
    // building a plan copies its table with a stream sync, which a capture forbids
    SOAP_CHECK(!capturing, "soap_cuda::feedback_sync_: these layers have no launch plan yet, "
                "and one cannot be built while a CUDA graph is captured: run the same sync once "
                "before capturing (a warm-up step does)");
    check_sync_memory(weights, b_matrices);
    std::vector<int64_t> numels(layers.size());
    for (size_t i = 0; i < layers.size(); ++i) numels[i] = layers[i].numel;
    // One resident wave of blocks (as many as fit on every SM at once), split in proportion to
    // size; each block covers kSyncUnroll vectors per thread per step.
    const int per_sm = sync_blocks_per_sm(dtype);
    const int64_t budget = int64_t{per_sm > 0 ? per_sm : 8} *
                           at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
    const std::vector<int64_t> first = partition_sync_blocks(
        numels, sync_vector_width(dtype) * kSyncThreads * kSyncUnroll, budget);
    for (size_t i = 0; i < layers.size(); ++i) layers[i].first_block = first[i];
    const int64_t total_blocks = first[layers.size()];
    SOAP_CHECK(total_blocks <= int64_t{0x7fffffff}, "soap_cuda::feedback_sync_: too many "
                "blocks (", total_blocks, ")");
    const int64_t bytes = static_cast<int64_t>(layers.size() * sizeof(SyncLayer));
    auto host = at::empty({bytes}, at::TensorOptions().dtype(at::kByte));
    std::memcpy(host.data_ptr<uint8_t>(), layers.data(), bytes);
    auto plan = std::make_unique<SyncPlan>(SyncPlan{
        device, dtype, std::move(layers),
        host.to(at::Device(at::kCUDA, device), /*non_blocking=*/false), total_blocks, false});
    evict();
    plans_.push_back(std::move(plan));
    return PlanUse{plans_.back()->table, plans_.back()->total_blocks};
  }

 private:
  void evict() {
    while (plans_.size() >= kMaxPlans) {
      auto it = std::find_if(plans_.begin(), plans_.end(),
                             [](const std::unique_ptr<SyncPlan>& p) { return !p->captured; });
      if (it == plans_.end()) return;  // every plan serves a graph: keep them all
      plans_.erase(it);
    }
  }
  std::mutex mutex_;
  std::deque<std::unique_ptr<SyncPlan>> plans_;
};

PlanCache& plan_cache() {
  static PlanCache* cache = new PlanCache();  // never destroyed: CUDA may be gone at exit
  return *cache;
}

// The per-call values on the device: tensors already there are used as they are (a captured
// step passes device scales, due flags and streams, and nothing is copied); values on the CPU
// travel in one small copy.
struct DeviceValues {
  at::Tensor scales, due, streams;
};

DeviceValues device_values(const at::Tensor& scales, const c10::optional<at::Tensor>& due,
                           const c10::optional<at::Tensor>& streams, const at::Device& device) {
  DeviceValues v;
  v.scales = scales.is_cpu() ? scales.to(device, /*non_blocking=*/true) : scales;
  if (due.has_value() && due->defined()) v.due = *due;
  if (streams.has_value() && streams->defined()) {
    v.streams = streams->is_cpu() ? streams->to(device, /*non_blocking=*/true) : *streams;
  }
  return v;
}

void feedback_sync_cuda(at::TensorList weights, at::TensorList b_matrices,
                        const c10::List<c10::optional<at::Tensor>>& magnitudes,
                        const at::Tensor& scales, const c10::optional<at::Tensor>& due,
                        const c10::optional<at::Tensor>& streams) {
  check_feedback_sync_args(weights, b_matrices, magnitudes, scales, due, streams);
  if (weights.empty()) return;
  const c10::cuda::CUDAGuard guard(weights[0].device());
  const SyncDtype dtype = sync_dtype(weights[0].scalar_type());
  const int64_t n = static_cast<int64_t>(weights.size());

  std::vector<SyncLayer> layers(n);
  for (int64_t i = 0; i < n; ++i) {
    const c10::optional<at::Tensor> mag = magnitudes.get(i);
    layers[i] = SyncLayer{weights[i].const_data_ptr(), b_matrices[i].mutable_data_ptr(),
                          (mag.has_value() && mag->defined()) ? mag->const_data_ptr() : nullptr,
                          weights[i].numel(), 0};
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  C10_CUDA_CHECK(cudaStreamIsCapturing(stream, &capture));
  const PlanUse plan = plan_cache().get(weights[0].device().index(), dtype, std::move(layers),
                                          weights, b_matrices,
                                          capture != cudaStreamCaptureStatusNone);
  if (plan.total_blocks == 0) return bump_versions(b_matrices);  // every layer empty
  SOAP_CHECK(capture == cudaStreamCaptureStatusNone ||
              (!scales.is_cpu() && !(streams.has_value() && streams->defined() &&
                                     streams->is_cpu())),
              "soap_cuda::feedback_sync_: while a CUDA graph is captured, 'scales' and 'streams' "
              "must be on the device (a replay would not see new host values)");
  const DeviceValues values = device_values(scales, due, streams, weights[0].device());
  C10_CUDA_CHECK(launch_feedback_sync(
      reinterpret_cast<const SyncLayer*>(plan.table.const_data_ptr<uint8_t>()), n,
      plan.total_blocks,
      SyncValues{values.scales.const_data_ptr<double>(),
                 values.due.defined() ? values.due.const_data_ptr<bool>() : nullptr,
                 values.streams.defined() ? values.streams.const_data_ptr<int64_t>() : nullptr},
      dtype, stream));
  bump_versions(b_matrices);
}

}  // namespace

TORCH_LIBRARY_IMPL(soap_cuda, CUDA, m) {
  m.impl("feedback_sync_", &feedback_sync_cuda);
}

}  // namespace soap_cuda
