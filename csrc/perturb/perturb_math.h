// Element math shared by the CPU and CUDA kernels of the perturbation ops, so the two cannot
// drift: where a row of the K-tiled batch takes its noise from, the activations, and the
// finite-difference coefficient of one perturbation.
#pragma once

#include <cmath>
#include <cstdint>

#include "common/philox.h"

namespace soap_cuda {

enum class Activation : int { kIdentity = 0, kRelu = 1, kTanh = 2, kSigmoid = 3 };

template <typename T>
SOAP_HD T activate(T z, Activation act) {
  switch (act) {
    case Activation::kRelu:
      return z < T(0) ? T(0) : z;  // keeps NaN, as torch.relu does
    case Activation::kTanh:
#ifdef __CUDA_ARCH__
      return ::tanh(z);
#else
      return std::tanh(z);
#endif
    case Activation::kSigmoid:
#ifdef __CUDA_ARCH__
      return T(1) / (T(1) + ::exp(-z));
#else
      return T(1) / (T(1) + std::exp(-z));
#endif
    default:
      return z;
  }
}

// Perturbation slots: K perturbed passes use M = K noise draws, or M = K/2 with antithetic
// pairs (pass 2m gets +xi_m, pass 2m+1 gets -xi_m; passes counted from 0 after the clean one).
SOAP_HD int64_t num_slots(int64_t num_perturb, bool antithetic) {
  return antithetic ? num_perturb / 2 : num_perturb;
}

// Row `row` of a tiled batch ((K+1) blocks of `batch` rows, block 0 clean): whether it is
// perturbed, its noise sign, and the flat index of its first noise element in the
// [M, batch, width] noise tensor.
struct NoiseRow {
  bool perturbed;
  int sign;
  int64_t first;
};

SOAP_HD NoiseRow noise_row(int64_t row, int64_t batch, int64_t width, bool antithetic) {
  const int64_t block = row / batch;
  if (block == 0) return NoiseRow{false, 1, 0};
  const int64_t pass = block - 1;
  const int64_t slot = antithetic ? pass / 2 : pass;
  const int sign = (antithetic && (pass & 1)) ? -1 : 1;
  return NoiseRow{true, sign, (slot * batch + row % batch) * width};
}

// Finite-difference coefficient of slot m for example b, losses [K+1, batch] (row 0 clean):
// L_m - L_0, or (L_m+ - L_m-) / 2 for an antithetic pair. The estimate of dL/da is
// scale / (sigma M) * sum_m coef_m xi_m.
SOAP_HD double slot_coefficient(const double* losses, int64_t batch, int64_t slot, int64_t b,
                                bool antithetic) {
  if (antithetic) {
    return (losses[(2 * slot + 1) * batch + b] - losses[(2 * slot + 2) * batch + b]) * 0.5;
  }
  return losses[(slot + 1) * batch + b] - losses[b];
}

// The estimate sums its slots in chunks of kEstimateChunk (each chunk's partial from 0.0, in slot
// order), then the chunks' partials in chunk order (from the first partial). CPU and CUDA use this
// one order, so the GPU can compute the chunks in parallel and still give the CPU's bits.
constexpr int64_t kEstimateChunk = 8;

SOAP_HD int64_t num_estimate_chunks(int64_t slots) {
  return (slots + kEstimateChunk - 1) / kEstimateChunk;
}

}  // namespace soap_cuda
