// CUDA kernels of the perturbation ops. Same element math as the CPU kernels (perturb_math.h,
// common/philox.h), 64-bit indices throughout. Each thread draws whole Philox pairs (one call
// gives two noise elements), and the estimate's slot chunks run in parallel.
#include <algorithm>

#include "perturb_kernels.h"

namespace soap_cuda {
namespace {

constexpr int kThreads = 256;

// Explicitly rounded add and multiply: nvcc would otherwise contract `z + xi * sigma` and
// `acc + coef * xi` into FMAs, which the CPU kernels (and the Python reference) do not use.
__device__ __forceinline__ float add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double add_rn(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }

// Grid for a grid-stride loop over n work items (n > 0).
unsigned int grid_for(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned int>(std::min<int64_t>(blocks, int64_t{1} << 20));
}

__device__ __forceinline__ int64_t thread_index() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t grid_stride() {
  return static_cast<int64_t>(blockDim.x) * gridDim.x;
}

// Noise elements q and q + 1, with q even (one Philox call); q + 1 may lie past the end.
__device__ __forceinline__ void pair_at(uint64_t seed, uint64_t offset, int64_t q, double* even,
                                        double* odd) {
  philox::normal_pair(seed, offset, static_cast<uint64_t>(q) >> 1, even, odd);
}

template <typename T>
__global__ void philox_normal_fill_kernel(T* __restrict__ data, int64_t n, uint64_t seed,
                                          uint64_t offset) {
  const int64_t pairs = (n + 1) / 2;
  for (int64_t p = thread_index(); p < pairs; p += grid_stride()) {
    double even, odd;
    pair_at(seed, offset, 2 * p, &even, &odd);
    data[2 * p] = static_cast<T>(even);
    if (2 * p + 1 < n) data[2 * p + 1] = static_cast<T>(odd);
  }
}

// One noise-fed element: z = act(pre + bias + sigma * s * xi).
template <typename T>
__device__ __forceinline__ T noisy(T pre, const T* bias, int64_t j, double xi, int sign,
                                   T sigma, Activation act) {
  T z = pre;
  if (bias != nullptr) z = add_rn(z, bias[j]);
  auto x = static_cast<T>(xi);
  if (sign < 0) x = -x;
  return activate<T>(add_rn(z, mul_rn(x, sigma)), act);
}

// Work items: one per noise pair of the [M, batch, width] noise tensor (each feeds its elements
// in the one or two passes that use that slot), then one per element of the clean block.
// pre and out may be one buffer (perturbed_bias_act_): each element is read and then written by
// one thread only, so neither pointer is __restrict__.
template <typename T>
__global__ void perturbed_bias_act_kernel(const T* pre, const T* __restrict__ bias, T* out,
                                          int64_t batch, int64_t width, int64_t slots,
                                          bool antithetic, T sigma, uint64_t seed,
                                          uint64_t offset, Activation act) {
  const int64_t block_elems = batch * width;  // elements of one pass
  const int64_t noise_elems = slots * block_elems;
  const int64_t pairs = (noise_elems + 1) / 2;
  for (int64_t t = thread_index(); t < pairs + block_elems; t += grid_stride()) {
    if (t >= pairs) {  // the clean pass
      const int64_t i = t - pairs;
      T z = pre[i];
      if (bias != nullptr) z = add_rn(z, bias[i % width]);
      out[i] = activate<T>(z, act);
      continue;
    }
    double xi[2];
    pair_at(seed, offset, 2 * t, &xi[0], &xi[1]);
    for (int k = 0; k < 2; ++k) {
      const int64_t q = 2 * t + k;  // noise element (slot m, example b, unit j)
      if (q >= noise_elems) break;
      const int64_t m = q / block_elems, j = q % width;
      const int64_t within = q - m * block_elems;  // b * width + j
      const int64_t pass = antithetic ? 2 * m : m;
      const int64_t i = (pass + 1) * block_elems + within;
      out[i] = noisy<T>(pre[i], bias, j, xi[k], 1, sigma, act);
      if (antithetic) {
        const int64_t i2 = i + block_elems;  // pass 2m + 1: the same noise, negated
        out[i2] = noisy<T>(pre[i2], bias, j, xi[k], -1, sigma, act);
      }
    }
  }
}

// coef * xi summed over the slots of chunk c for units j0 and j0 + 1 of example b, in slot order
// from 0.0. The noise of (slot m, b, j) is element (m * rows + b) * width + j: for an even width
// j0's element is always even (one Philox call for both units), else every other row is not.
__device__ __forceinline__ void chunk_sums(const double* losses, int64_t rows, int64_t width,
                                           int64_t slots, int64_t c, int64_t b, int64_t j0,
                                           uint64_t seed, uint64_t offset, bool antithetic,
                                           double* acc0, double* acc1) {
  const bool two = j0 + 1 < width;
  double a0 = 0.0, a1 = 0.0;
  const int64_t m_end = slots < (c + 1) * kEstimateChunk ? slots : (c + 1) * kEstimateChunk;
  for (int64_t m = c * kEstimateChunk; m < m_end; ++m) {
    const double coef = slot_coefficient(losses, rows, m, b, antithetic);
    const int64_t q = (m * rows + b) * width + j0;
    double x0, x1;
    if ((q & 1) == 0) {
      pair_at(seed, offset, q, &x0, &x1);
    } else {
      x0 = philox::normal(seed, offset, static_cast<uint64_t>(q));
      x1 = two ? philox::normal(seed, offset, static_cast<uint64_t>(q + 1)) : 0.0;
    }
    a0 = add_rn(a0, mul_rn(coef, x0));
    if (two) a1 = add_rn(a1, mul_rn(coef, x1));
  }
  *acc0 = a0;
  *acc1 = a1;
}

// Work item (chunk c, example b, unit pair jp). One chunk: the result itself; several: the
// chunk's partial sums into partial[c][b][j].
template <typename T>
__global__ void perturb_estimate_chunks_kernel(const double* __restrict__ losses,
                                               T* __restrict__ out,
                                               double* __restrict__ partial, int64_t rows,
                                               int64_t width, int64_t slots, double factor,
                                               uint64_t seed, uint64_t offset, bool antithetic) {
  const int64_t unit_pairs = (width + 1) / 2;
  const int64_t chunks = num_estimate_chunks(slots);
  const int64_t n = chunks * rows * unit_pairs;
  for (int64_t t = thread_index(); t < n; t += grid_stride()) {
    const int64_t jp = t % unit_pairs, b = (t / unit_pairs) % rows, c = t / (unit_pairs * rows);
    const int64_t j0 = 2 * jp;
    double a0, a1;
    chunk_sums(losses, rows, width, slots, c, b, j0, seed, offset, antithetic, &a0, &a1);
    if (chunks == 1) {
      out[b * width + j0] = static_cast<T>(mul_rn(a0, factor));
      if (j0 + 1 < width) out[b * width + j0 + 1] = static_cast<T>(mul_rn(a1, factor));
    } else {
      double* dst = partial + (c * rows + b) * width + j0;
      dst[0] = a0;
      if (j0 + 1 < width) dst[1] = a1;
    }
  }
}

// out[i] = factor * (partial[0][i] + partial[1][i] + ...), in chunk order.
template <typename T>
__global__ void perturb_estimate_sum_kernel(const double* __restrict__ partial,
                                            T* __restrict__ out, int64_t n, int64_t chunks,
                                            double factor) {
  for (int64_t i = thread_index(); i < n; i += grid_stride()) {
    double acc = partial[i];
    for (int64_t c = 1; c < chunks; ++c) acc = add_rn(acc, partial[c * n + i]);
    out[i] = static_cast<T>(mul_rn(acc, factor));
  }
}

}  // namespace

template <typename T>
cudaError_t launch_philox_normal_fill(T* data, int64_t n, uint64_t seed, uint64_t offset,
                                      cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  philox_normal_fill_kernel<T><<<grid_for((n + 1) / 2), kThreads, 0, stream>>>(data, n, seed,
                                                                                offset);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_perturbed_bias_act(const T* pre, const T* bias, T* out, int64_t batch,
                                      int64_t width, int64_t num_perturb, bool antithetic,
                                      T sigma, uint64_t seed, uint64_t offset, Activation act,
                                      cudaStream_t stream) {
  const int64_t block_elems = batch * width;
  if (block_elems == 0) return cudaSuccess;
  const int64_t slots = num_slots(num_perturb, antithetic);
  const int64_t items = (slots * block_elems + 1) / 2 + block_elems;
  perturbed_bias_act_kernel<T><<<grid_for(items), kThreads, 0, stream>>>(
      pre, bias, out, batch, width, slots, antithetic, sigma, seed, offset, act);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_perturb_estimate(const double* losses, T* out, double* partial, int64_t rows,
                                    int64_t width, int64_t slots, double factor, uint64_t seed,
                                    uint64_t offset, bool antithetic, cudaStream_t stream) {
  const int64_t n = rows * width;
  if (n == 0) return cudaSuccess;
  const int64_t chunks = num_estimate_chunks(slots);
  const int64_t items = chunks * rows * ((width + 1) / 2);
  perturb_estimate_chunks_kernel<T><<<grid_for(items), kThreads, 0, stream>>>(
      losses, out, partial, rows, width, slots, factor, seed, offset, antithetic);
  if (chunks > 1) {
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    perturb_estimate_sum_kernel<T><<<grid_for(n), kThreads, 0, stream>>>(partial, out, n,
                                                                         chunks, factor);
  }
  return cudaGetLastError();
}

#define SOAP_CUDA_INSTANTIATE(T)                                                              \
  template cudaError_t launch_philox_normal_fill<T>(T*, int64_t, uint64_t, uint64_t,          \
                                                    cudaStream_t);                            \
  template cudaError_t launch_perturbed_bias_act<T>(const T*, const T*, T*, int64_t, int64_t, \
                                                    int64_t, bool, T, uint64_t, uint64_t,     \
                                                    Activation, cudaStream_t);                \
  template cudaError_t launch_perturb_estimate<T>(const double*, T*, double*, int64_t,        \
                                                  int64_t, int64_t, double, uint64_t,         \
                                                  uint64_t, bool, cudaStream_t);
SOAP_CUDA_INSTANTIATE(float)
SOAP_CUDA_INSTANTIATE(double)
#undef SOAP_CUDA_INSTANTIATE

}  // namespace soap_cuda
