// Casting the FA ops' arguments under autocast, as ATen's autocast kernels cast theirs, plus a
// copy of B in the autocast dtype that outlives autocast regions.
//
// ATen's cached_cast keeps the cast of a leaf that requires grad (a weight) until the
// outermost autocast region exits, and casts anything else afresh on every call. B is a buffer
// that changes rarely (at a sync, a load, an in-place edit) or never; casting it every forward
// is a full pass over a weight-sized tensor per layer. feedback_cast keeps its low-precision
// copy until B changes: the entry is keyed by B's storage and offset and holds its sizes,
// strides, dtype and version counter, so any in-place change (copy_, feedback_sync_, a
// load_state_dict, an optimizer step on a Kolen-Pollack B), a new storage (`.data =`, `.to()`)
// or another view misses and recasts. Writes that bypass the version counter (through
// `B.data`, or a raw pointer) are not seen: call clear_feedback_casts() after such a write.
// On CUDA the copy is made on the stream current at its first cast and, like ATen's own autocast
// cache, does not record other streams that later read it.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/DeviceType.h>
#include <c10/core/ScalarType.h>
#include <c10/util/Optional.h>

#include <cstddef>

namespace soap_cuda {

// ATen's rule (at::autocast::is_eligible): a floating tensor on the autocast device, not float64.
bool autocast_eligible(const at::Tensor& t, c10::DeviceType device);

// at::autocast::cached_cast: `t` in dtype `to` if eligible (W's cast cached for the region).
at::Tensor autocast_cast(const at::Tensor& t, at::ScalarType to, c10::DeviceType device);
c10::optional<at::Tensor> autocast_cast(const c10::optional<at::Tensor>& t, at::ScalarType to,
                                        c10::DeviceType device);

// B in dtype `to` if eligible, from the cache above while B is unchanged. A B that requires
// grad while grad mode is on (Kolen-Pollack in training) takes autocast_cast: its cast must be
// recorded by autograd. Tracing, fake and functional tensors, and autocast(cache_enabled=False),
// cast afresh.
at::Tensor feedback_cast(const at::Tensor& b, at::ScalarType to, c10::DeviceType device);

// Number of cached copies, and dropping them all (tests; after writes the cache cannot see).
size_t feedback_cast_count();
void clear_feedback_casts();

}  // namespace soap_cuda
