// Argument checks of feedback_sync_, shared by the CPU and CUDA kernels, and the CPU kernel's
// registration (here, beside the dispatcher headers the checks already parse).
#include "feedback_sync.h"

#include <ATen/core/Tensor.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/core/List.h>
#include <torch/library.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "../common/checks.h"

namespace soap_cuda {
namespace {

// t must match ref's dtype and device (and shape, where same_shape), and be contiguous:
// B and |M| against W, and each W against weights[0].
void check_like(const char* op, const std::string& arg, const at::Tensor& t,
                const std::string& ref_arg, const at::Tensor& ref, bool same_shape) {
  SOAP_CHECK(!same_shape || t.sizes() == ref.sizes(), "soap_cuda::", op, ": argument '", arg,
              "' must have the shape of '", ref_arg, "' ", ref.sizes(), ", got ", t.sizes());
  check_same_dtype(op, arg.c_str(), t, ref_arg.c_str(), ref);
  check_same_device(op, arg.c_str(), t, ref_arg.c_str(), ref);
  check_contiguous(op, arg.c_str(), t);
}

// [start, end) of a contiguous tensor's bytes (empty for no elements).
std::pair<uintptr_t, uintptr_t> byte_range(const at::Tensor& t) {
  const auto start = reinterpret_cast<uintptr_t>(t.const_data_ptr());
  return {start, t.numel() == 0 ? start : start + t.numel() * t.element_size()};
}

bool ranges_overlap(std::pair<uintptr_t, uintptr_t> a, std::pair<uintptr_t, uintptr_t> b) {
  return a.first < a.second && b.first < b.second && a.first < b.second && b.first < a.second;
}

// A B written while another layer's W or B is read or written would make the result depend on
// the order of the writes (and race on CUDA). Layers may share a W: that is only read.
void check_no_cross_layer_overlap(at::TensorList weights, at::TensorList b_matrices) {
  const size_t n = weights.size();
  std::vector<std::pair<uintptr_t, uintptr_t>> w_range(n), b_range(n);
  for (size_t i = 0; i < n; ++i) {
    w_range[i] = byte_range(weights[i]);
    b_range[i] = byte_range(b_matrices[i]);
  }
  for (size_t i = 0; i < n; ++i) {
    for (size_t j = 0; j < n; ++j) {
      if (j == i) continue;
      SOAP_CHECK(!ranges_overlap(b_range[i], w_range[j]), "soap_cuda::feedback_sync_: argument "
                  "'b_matrices[", i, "]' must not share memory with 'weights[", j, "]'");
      SOAP_CHECK(j < i || !ranges_overlap(b_range[i], b_range[j]), "soap_cuda::feedback_sync_: "
                  "argument 'b_matrices[", i, "]' must not share memory with 'b_matrices[", j,
                  "]'");
    }
  }
}

}  // namespace

void check_feedback_sync_args(at::TensorList weights, at::TensorList b_matrices,
                              const c10::List<c10::optional<at::Tensor>>& magnitudes,
                              const at::Tensor& scales, const c10::optional<at::Tensor>& due,
                              const c10::optional<at::Tensor>& streams) {
  constexpr const char* op = "feedback_sync_";
  const size_t n = weights.size();
  SOAP_CHECK(b_matrices.size() == n && magnitudes.size() == n, "soap_cuda::feedback_sync_: "
              "arguments 'weights', 'b_matrices' and 'magnitudes' must have the same length, got ",
              n, ", ", b_matrices.size(), " and ", magnitudes.size());
  check_dim(op, "scales", scales, 1);
  SOAP_CHECK(scales.scalar_type() == at::kDouble, "soap_cuda::feedback_sync_: argument "
              "'scales' must be float64, got ", scales.scalar_type());
  SOAP_CHECK(static_cast<size_t>(scales.numel()) == n, "soap_cuda::feedback_sync_: argument "
              "'scales' must have one entry per layer (", n, "), got ", scales.numel());
  check_contiguous(op, "scales", scales);
  const bool has_due = due.has_value() && due->defined();
  if (has_due) {
    check_dim(op, "due", *due, 1);
    SOAP_CHECK(due->scalar_type() == at::kBool, "soap_cuda::feedback_sync_: argument 'due' "
                "must be bool, got ", due->scalar_type());
    SOAP_CHECK(static_cast<size_t>(due->numel()) == n, "soap_cuda::feedback_sync_: argument "
                "'due' must have one entry per layer (", n, "), got ", due->numel());
    check_contiguous(op, "due", *due);
  }
  const bool has_streams = streams.has_value() && streams->defined();
  if (has_streams) {
    check_dim(op, "streams", *streams, 2);
    SOAP_CHECK(streams->scalar_type() == at::kLong, "soap_cuda::feedback_sync_: argument "
                "'streams' must be int64, got ", streams->scalar_type());
    SOAP_CHECK(static_cast<size_t>(streams->size(0)) == n && streams->size(1) == 3,
                "soap_cuda::feedback_sync_: argument 'streams' must have shape [", n,
                ", 3] (draw, seed, offset per layer), got ", streams->sizes());
    check_contiguous(op, "streams", *streams);
  }
  if (n == 0) return;
  const at::Tensor& first = weights[0];
  // On the CPU, known scales and streams need no device tensor (the CUDA launch copies them
  // once, with its other per-call values); on the weights' device, the kernel reads them there.
  SOAP_CHECK(scales.device() == first.device() || scales.is_cpu(), "soap_cuda::feedback_sync_: "
              "argument 'scales' must be on the device of 'weights[0]' (", first.device(),
              ") or on the CPU, got ", scales.device());
  SOAP_CHECK(!has_streams || streams->device() == first.device() || streams->is_cpu(),
              "soap_cuda::feedback_sync_: argument 'streams' must be on the device of "
              "'weights[0]' (", first.device(), ") or on the CPU, got ", streams->device());
  // due decides on the device, without a host read: it lives where the weights are
  SOAP_CHECK(!has_due || due->device() == first.device(), "soap_cuda::feedback_sync_: argument "
              "'due' must be on the device of 'weights[0]' (", first.device(), "), got ",
              due->device());
  for (size_t i = 0; i < n; ++i) {
    const std::string wi = "weights[" + std::to_string(i) + "]";
    const std::string bi = "b_matrices[" + std::to_string(i) + "]";
    const at::Tensor& w = weights[i];
    const at::Tensor& b = b_matrices[i];
    check_floating(op, wi.c_str(), w);
    check_like(op, wi, w, "weights[0]", first, /*same_shape=*/false);
    check_like(op, bi, b, wi, w, /*same_shape=*/true);
    const c10::optional<at::Tensor> m = magnitudes.get(i);
    if (m.has_value() && m->defined()) {
      const std::string mi = "magnitudes[" + std::to_string(i) + "]";
      check_like(op, mi, *m, wi, w, /*same_shape=*/true);
    }
  }
  // A row that draws where a magnitude is given would be ambiguous; the draw flags are read on
  // the host only when the streams are there already (a device read would sync).
  if (has_streams && streams->is_cpu()) {
    const int64_t* rows = streams->const_data_ptr<int64_t>();
    for (size_t i = 0; i < n; ++i) {
      const c10::optional<at::Tensor> m = magnitudes.get(i);
      SOAP_CHECK(rows[3 * i] == 0 || !(m.has_value() && m->defined()), "soap_cuda::"
                  "feedback_sync_: argument 'magnitudes[", i, "]' must be None where "
                  "'streams' row ", i, " draws the magnitude");
    }
  }
}

void check_sync_memory(at::TensorList weights, at::TensorList b_matrices) {
  for (size_t i = 0; i < weights.size(); ++i) {
    SOAP_CHECK(at::get_overlap_status(b_matrices[i], weights[i]) == at::MemOverlapStatus::No,
                "soap_cuda::feedback_sync_: argument 'b_matrices[", i, "]' must not be the same "
                "memory as 'weights[", i, "]'");
  }
  check_no_cross_layer_overlap(weights, b_matrices);
}

void bump_versions(at::TensorList b_matrices) {
  for (const at::Tensor& b : b_matrices) mark_written(b);
}

TORCH_LIBRARY_IMPL(soap_cuda, CPU, m) {
  m.impl("feedback_sync_", &feedback_sync_cpu);
}

}  // namespace soap_cuda
