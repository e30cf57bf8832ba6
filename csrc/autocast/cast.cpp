// The autocast casts of the FA ops (see cast.h): ATen's cached_cast for input, weight and bias,
// and a cache of B's low-precision copy that lives until B changes.
#include "cast.h"

#include <ATen/core/grad_mode.h>
#include <c10/core/StorageImpl.h>
#include <c10/util/intrusive_ptr.h>

#include <functional>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "../common/plain_tensor.h"

// From ATen/autocast_mode.h, which includes all of ATen/ATen.h; these three are all we use.
namespace at::autocast {
TORCH_API Tensor cached_cast(at::ScalarType to_type, const Tensor& arg,
                             c10::DeviceType device_type);
TORCH_API bool is_autocast_cache_enabled();
}  // namespace at::autocast

namespace soap_cuda {
namespace {

struct Key {
  const c10::StorageImpl* storage;
  int64_t offset;
  at::ScalarType to;
  bool operator==(const Key& o) const {
    return storage == o.storage && offset == o.offset && to == o.to;
  }
};

struct KeyHash {
  size_t operator()(const Key& k) const {
    return std::hash<const void*>()(k.storage) ^ (std::hash<int64_t>()(k.offset) << 1) ^
           (static_cast<size_t>(k.to) << 7);
  }
};

struct Entry {
  // A weak reference keeps the StorageImpl's memory (not its data) alive, so no other storage
  // can take its address while the entry exists.
  c10::weak_intrusive_ptr<c10::StorageImpl> storage;
  std::vector<int64_t> sizes, strides;
  at::ScalarType from;
  uint32_t version;
  at::Tensor cast;

  bool matches(const at::Tensor& b, uint32_t v) const {
    return !storage.expired() && version == v && from == b.scalar_type() &&
           b.sizes() == c10::IntArrayRef(sizes) && b.strides() == c10::IntArrayRef(strides);
  }
};

std::mutex cache_mutex;
std::unordered_map<Key, Entry, KeyHash>& cache() {
  static auto* map = new std::unordered_map<Key, Entry, KeyHash>();  // never destroyed: no
  return *map;                                                       // exit-order hazards
}

// Moves out the entries whose B is gone; the caller frees them after unlocking (freeing a
// tensor may run arbitrary deleters).
std::vector<Entry> take_expired() {
  std::vector<Entry> gone;
  auto& map = cache();
  for (auto it = map.begin(); it != map.end();) {
    if (it->second.storage.expired()) {
      gone.push_back(std::move(it->second));
      it = map.erase(it);
    } else {
      ++it;
    }
  }
  return gone;
}

}  // namespace

bool autocast_eligible(const at::Tensor& t, c10::DeviceType device) {
  if (!t.defined() || !t.is_floating_point() || t.scalar_type() == at::kDouble) return false;
  return device == c10::DeviceType::CUDA ? t.is_cuda() : (t.is_cpu() || t.is_mkldnn());
}

at::Tensor autocast_cast(const at::Tensor& t, at::ScalarType to, c10::DeviceType device) {
  return at::autocast::cached_cast(to, t, device);
}

c10::optional<at::Tensor> autocast_cast(const c10::optional<at::Tensor>& t, at::ScalarType to,
                                        c10::DeviceType device) {
  if (!t.has_value()) return c10::nullopt;
  return autocast_cast(*t, to, device);
}

at::Tensor feedback_cast(const at::Tensor& b, at::ScalarType to, c10::DeviceType device) {
  if (!autocast_eligible(b, device) || b.scalar_type() == to) return b;
  if (b.requires_grad() && at::GradMode::is_enabled()) return autocast_cast(b, to, device);
  if (!at::autocast::is_autocast_cache_enabled() || !is_plain_dense(b)) return b.to(to);
  const Key key{b.storage().unsafeGetStorageImpl(), b.storage_offset(), to};
  const uint32_t version = b._version();
  {
    std::lock_guard<std::mutex> lock(cache_mutex);
    const auto it = cache().find(key);
    if (it != cache().end() && it->second.matches(b, version)) return it->second.cast;
  }
  at::Tensor cast;
  {
    at::NoGradGuard no_grad;  // a B that requires grad gets here only with grad mode off
    cast = b.to(to);
  }
  Entry entry{b.storage().getWeakStorageImpl(), b.sizes().vec(), b.strides().vec(),
              b.scalar_type(), version, cast};
  std::vector<Entry> gone;
  {
    std::lock_guard<std::mutex> lock(cache_mutex);
    gone = take_expired();
    auto [it, inserted] = cache().try_emplace(key, std::move(entry));
    if (!inserted) std::swap(it->second, entry);  // the old entry is freed outside the lock
  }
  return cast;
}

size_t feedback_cast_count() {
  std::vector<Entry> gone;
  std::lock_guard<std::mutex> lock(cache_mutex);
  gone = take_expired();
  return cache().size();
}

void clear_feedback_casts() {
  std::unordered_map<Key, Entry, KeyHash> gone;
  std::lock_guard<std::mutex> lock(cache_mutex);
  std::swap(gone, cache());
}

}  // namespace soap_cuda
