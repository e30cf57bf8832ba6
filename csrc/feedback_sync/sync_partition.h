// How the CUDA sync splits its one launch among the layers: blocks in proportion to each layer's
// size, so the largest layer gets enough of them to saturate memory bandwidth however many small
// layers share the call. Plain C++ (no CUDA, no ATen) so that the CPU build can expose it to the
// tests (soap_cuda._C._sync_block_partition).
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

namespace soap_cuda {

// numels[i]: elements of layer i; elems_per_block: what one block covers in one pass; budget:
// the blocks that fill the GPU. Returns n + 1 offsets: layer i gets blocks
// first[i] .. first[i + 1] - 1. A layer gets no more blocks than it has work for, at least one
// if it has any work, and otherwise ceil(budget * numel / total) blocks.
inline std::vector<int64_t> partition_sync_blocks(const std::vector<int64_t>& numels,
                                                  int64_t elems_per_block, int64_t budget) {
  int64_t total = 0;
  for (const int64_t n : numels) total += n;
  std::vector<int64_t> first(numels.size() + 1, 0);
  for (size_t i = 0; i < numels.size(); ++i) {
    const int64_t needed = (numels[i] + elems_per_block - 1) / elems_per_block;
    int64_t blocks = needed;
    if (needed > 0) {
      // ceil(budget * numel / total), in long double: budget * numel can pass 2^63
      const auto share = static_cast<long double>(budget) * static_cast<long double>(numels[i]) /
                         static_cast<long double>(total);
      const auto wanted = static_cast<int64_t>(share) + (share > static_cast<int64_t>(share));
      blocks = std::min(needed, std::max<int64_t>(1, wanted));
    }
    first[i + 1] = first[i] + blocks;
  }
  return first;
}

}  // namespace soap_cuda
