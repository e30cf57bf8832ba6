// soap_cuda-build: own translation unit (its optimisation pragmas and target clones must reach no other code)
// Host code: a block of consecutive noise elements, computed pair by pair in a loop the compiler
// vectorises. The values are those of philox::normal (common/philox.h), operation for
// operation: the same Philox rounds, the same +, -, *, /, sqrt in the same order, without FMA
// (contraction is off for this file), so SSE2, AVX2 and AVX-512 builds of the loop, the scalar
// path, the CUDA kernels and the Python reference agree bit for bit. Three differences in form,
// none in value:
//   - n1 and n2 are assembled in double from the exact 27- and 26-bit parts (every partial sum
//     is an integer below 2^53, so exact);
//   - the quadrant comes from the top 27 bits alone: (n2 + 2^50) >> 51 == ((x2 >> 5) + 2^24) >> 25
//     since the low 26 bits cannot carry into bit 51;
//   - frexp is read off the IEEE bits (u in [2^-53, 1] is normal and positive).
// The loop is compiled for AVX-512, AVX2 and baseline x86-64 and picked at load time.

#include <cstdint>
#include <cstring>

#include "perturb.h"

// (after the includes, so that no header resets it)
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=off")
#endif

namespace soap_cuda {
namespace philox {
namespace {

#if defined(__GNUC__) && !defined(__clang__) && (defined(__x86_64__) || defined(__i386__)) && \
    defined(__linux__)
#define SOAP_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define SOAP_CLONES
#endif

inline double bits_to_double(uint64_t b) {
  double d;
  std::memcpy(&d, &b, sizeof d);
  return d;
}
inline uint64_t double_to_bits(double d) {
  uint64_t b;
  std::memcpy(&b, &d, sizeof b);
  return b;
}

// Pairs first_pair .. first_pair + npairs - 1: out[2 i] even element, out[2 i + 1] odd one.
SOAP_CLONES void pairs_block(uint64_t seed, uint64_t offset, uint64_t first_pair, int64_t npairs,
                             double* __restrict__ out) {
  constexpr uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;
  uint32_t key0[10], key1[10];
  key0[0] = static_cast<uint32_t>(seed);
  key1[0] = static_cast<uint32_t>(seed >> 32);
  for (int r = 1; r < 10; ++r) {
    key0[r] = key0[r - 1] + 0x9E3779B9u;
    key1[r] = key1[r - 1] + 0xBB67AE85u;
  }
  const uint32_t off_lo = static_cast<uint32_t>(offset), off_hi = static_cast<uint32_t>(offset >> 32);
  constexpr double kTwoPow53Inv = 1.0 / 9007199254740992.0;
  // sqrt keeps its errno path (GCC ignores no-math-errno in target clones), which stops the
  // loop vectorising: the vector loop leaves -2 log u and the signed cos/sin, a scalar loop
  // finishes with the square root.
  constexpr int64_t kChunk = 256;
  double minus_two_log[kChunk], even_unit[kChunk], odd_unit[kChunk];
  for (int64_t c = 0; c < npairs; c += kChunk) {
    const int64_t len = npairs - c < kChunk ? npairs - c : kChunk;
    const uint64_t chunk_pair = first_pair + static_cast<uint64_t>(c);
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) {
      const uint64_t pair = chunk_pair + static_cast<uint64_t>(i);
      uint32_t c0 = static_cast<uint32_t>(pair), c1 = static_cast<uint32_t>(pair >> 32);
      uint32_t c2 = off_lo, c3 = off_hi;
#pragma GCC unroll 10
      for (int r = 0; r < 10; ++r) {
        const uint64_t p0 = static_cast<uint64_t>(kMul0) * c0;
        const uint64_t p1 = static_cast<uint64_t>(kMul1) * c2;
        const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ key0[r];
        const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ key1[r];
        c1 = static_cast<uint32_t>(p1);
        c3 = static_cast<uint32_t>(p0);
        c0 = n0;
        c2 = n2;
      }
      // -2 log(n1 2^-53)
      const double n1 =
          static_cast<double>(c0 >> 5) * 67108864.0 + static_cast<double>(c1 >> 6) + 1.0;
      const double u = n1 * kTwoPow53Inv;
      const uint64_t ub = double_to_bits(u);
      double e = static_cast<double>(static_cast<int64_t>(ub >> 52) - 1023);
      double m = bits_to_double((ub & 0x000FFFFFFFFFFFFFull) | 0x3FF0000000000000ull);
      const bool big = m > 1.4142135623730951;
      m = big ? m * 0.5 : m;
      e = big ? e + 1.0 : e;
      minus_two_log[i] = -2.0 * log_reduced(m, e);
      // theta = quadrant * 90deg + x
      const uint32_t hi = c2 >> 5;
      const uint32_t quadrant = (hi + (1u << 24)) >> 25;
      const int32_t rest_hi = static_cast<int32_t>(hi) - static_cast<int32_t>(quadrant << 25);
      const double rest = static_cast<double>(rest_hi) * 67108864.0 + static_cast<double>(c3 >> 6);
      const double x = (rest * kTwoPow53Inv) * 6.283185307179586;
      const double cx = cos_basic(x), sx = sin_basic(x);
      const uint32_t we = quadrant & 3u, wo = (quadrant + 3u) & 3u;
      even_unit[i] = we == 0 ? cx : (we == 1 ? -sx : (we == 2 ? -cx : sx));
      odd_unit[i] = wo == 0 ? cx : (wo == 1 ? -sx : (wo == 2 ? -cx : sx));
    }
    double* o = out + 2 * c;
    for (int64_t i = 0; i < len; ++i) {
      const double radius = std::sqrt(minus_two_log[i]);
      o[2 * i] = radius * even_unit[i];
      o[2 * i + 1] = radius * odd_unit[i];
    }
  }
}

}  // namespace

void normals_block(uint64_t seed, uint64_t offset, int64_t first, int64_t count, double* out) {
  if (count <= 0) return;
  int64_t j = 0;
  if (first & 1) {
    out[0] = normal(seed, offset, static_cast<uint64_t>(first));
    j = 1;
  }
  const int64_t npairs = (count - j) / 2;
  if (npairs > 0) {
    pairs_block(seed, offset, static_cast<uint64_t>(first + j) >> 1, npairs, out + j);
    j += 2 * npairs;
  }
  if (j < count) out[j] = normal(seed, offset, static_cast<uint64_t>(first + j));
}

}  // namespace philox
}  // namespace soap_cuda
