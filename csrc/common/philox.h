// Counter-based Gaussian noise that is bit-identical on CPU, CUDA and in the Python reference
// (soap_cuda/reference/philox.py mirrors every operation below, in the same order).
//
// Noise element `index` of stream (seed, offset):
//   Philox4x32-10 with key (lo32(seed), hi32(seed)) and counter
//   (lo32(index/2), hi32(index/2), lo32(offset), hi32(offset)) gives 4 words x0..x3;
//   n1 = (x0>>5)*2^26 + (x1>>6) + 1 in [1, 2^53],  n2 = (x2>>5)*2^26 + (x3>>6) in [0, 2^53);
//   Box-Muller in float64: r = sqrt(-2 log(n1 2^-53)), theta = 2 pi n2 2^-53;
//   even index -> r cos(theta), odd index -> r sin(theta).
// Library log/sin/cos differ in their last bits between glibc, libdevice and torch, so log, sin
// and cos are written here with +, -, *, /, sqrt and frexp only (all correctly rounded or exact
// in IEEE 754), with fixed evaluation order and no fused multiply-add: device code uses the
// explicitly rounded intrinsics (never contracted), and host code is compiled with FP
// contraction off (pragma below; clang only contracts within one expression, and every
// operation here is its own call).
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define SOAP_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__)
// always_inline: the vectorised host loop (perturb/philox_block_cpu.cpp) is compiled with other
// optimisation and target options, which would otherwise keep these out of it.
#define SOAP_HD inline __attribute__((always_inline))
#else
#define SOAP_HD inline
#endif

#if defined(__GNUC__) && !defined(__clang__) && !defined(__CUDACC__)
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
#endif

namespace soap_cuda {
namespace philox {

// ---- IEEE double operations that are never fused or reassociated ----
SOAP_HD double dadd(double a, double b) {
#ifdef __CUDA_ARCH__
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}
SOAP_HD double dsub(double a, double b) {
#ifdef __CUDA_ARCH__
  return __dsub_rn(a, b);
#else
  return a - b;
#endif
}
SOAP_HD double dmul(double a, double b) {
#ifdef __CUDA_ARCH__
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}
SOAP_HD double ddiv(double a, double b) {
#ifdef __CUDA_ARCH__
  return __ddiv_rn(a, b);
#else
  return a / b;
#endif
}
SOAP_HD double dsqrt(double a) {
#ifdef __CUDA_ARCH__
  return __dsqrt_rn(a);
#else
  return std::sqrt(a);
#endif
}

// ---- Philox4x32-10 (Salmon et al., SC'11; the Random123 / cuRAND constants) ----
struct Words {
  uint32_t x0, x1, x2, x3;
};

SOAP_HD Words philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0,
                            uint32_t k1) {
  constexpr uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;
  constexpr uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k0 += kWeyl0;
      k1 += kWeyl1;
    }
    const uint64_t p0 = static_cast<uint64_t>(kMul0) * c0;
    const uint64_t p1 = static_cast<uint64_t>(kMul1) * c2;
    const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
  }
  return Words{c0, c1, c2, c3};
}

// ---- log, sin, cos from basic operations (coefficients: shortest round-trip decimals) ----

// log(m 2^e) for m in [sqrt(1/2), sqrt(2)): log m = 2 atanh(s), s = (m - 1) / (m + 1),
// |s| < 0.1716, series to s^23; e ln2 with ln2 split (fdlibm) so that e * ln2_hi is exact.
SOAP_HD double log_reduced(double m, double e) {
  const double s = ddiv(dsub(m, 1.0), dadd(m, 1.0));
  const double s2 = dmul(s, s);
  double p = 0.043478260869565216;                 // 1/23
  p = dadd(dmul(p, s2), 0.047619047619047616);     // 1/21
  p = dadd(dmul(p, s2), 0.05263157894736842);      // 1/19
  p = dadd(dmul(p, s2), 0.058823529411764705);     // 1/17
  p = dadd(dmul(p, s2), 0.06666666666666667);      // 1/15
  p = dadd(dmul(p, s2), 0.07692307692307693);      // 1/13
  p = dadd(dmul(p, s2), 0.09090909090909091);      // 1/11
  p = dadd(dmul(p, s2), 0.1111111111111111);       // 1/9
  p = dadd(dmul(p, s2), 0.14285714285714285);      // 1/7
  p = dadd(dmul(p, s2), 0.2);                      // 1/5
  p = dadd(dmul(p, s2), 0.3333333333333333);       // 1/3
  p = dmul(p, s2);
  const double two_s = dmul(2.0, s);
  const double log_m = dadd(two_s, dmul(two_s, p));
  return dadd(dmul(e, 6.93147180369123816490e-01), dadd(dmul(e, 1.90821492927058770002e-10), log_m));
}

// log(u) for u in (0, 1]: u = m 2^e with m in [sqrt(1/2), sqrt(2)), log m = 2 atanh(s),
// s = (m - 1) / (m + 1), |s| < 0.1716, series to s^23.
SOAP_HD double log_basic(double u) {
  int exponent = 0;
  // frexp is exact: u = mant 2^exp with mant in [1/2, 1)
#ifdef __CUDA_ARCH__
  double m = dmul(::frexp(u, &exponent), 2.0);
#else
  double m = dmul(std::frexp(u, &exponent), 2.0);
#endif
  double e = static_cast<double>(exponent - 1);
  if (m > 1.4142135623730951) {
    m = dmul(m, 0.5);
    e = dadd(e, 1.0);
  }
  return log_reduced(m, e);
}

// sin(x) and cos(x) for |x| <= pi/4 (Taylor series to x^17 and x^18).
SOAP_HD double sin_basic(double x) {
  const double x2 = dmul(x, x);
  double p = 2.8114572543455206e-15;
  p = dadd(dmul(p, x2), -7.647163731819816e-13);
  p = dadd(dmul(p, x2), 1.6059043836821613e-10);
  p = dadd(dmul(p, x2), -2.505210838544172e-08);
  p = dadd(dmul(p, x2), 2.7557319223985893e-06);
  p = dadd(dmul(p, x2), -0.0001984126984126984);
  p = dadd(dmul(p, x2), 0.008333333333333333);
  p = dadd(dmul(p, x2), -0.16666666666666666);
  p = dadd(dmul(p, x2), 1.0);
  return dmul(x, p);
}

SOAP_HD double cos_basic(double x) {
  const double x2 = dmul(x, x);
  double p = -1.5619206968586225e-16;
  p = dadd(dmul(p, x2), 4.779477332387385e-14);
  p = dadd(dmul(p, x2), -1.1470745597729725e-11);
  p = dadd(dmul(p, x2), 2.08767569878681e-09);
  p = dadd(dmul(p, x2), -2.755731922398589e-07);
  p = dadd(dmul(p, x2), 2.48015873015873e-05);
  p = dadd(dmul(p, x2), -0.001388888888888889);
  p = dadd(dmul(p, x2), 0.041666666666666664);
  p = dadd(dmul(p, x2), -0.5);
  return dadd(dmul(p, x2), 1.0);
}

// ---- the noise ----
// One Philox call gives the pair of noise elements 2 pair and 2 pair + 1.
struct PairState {
  double radius;
  double x;         // the angle within its quadrant, |x| <= pi/4
  int64_t quadrant; // 0..4
};

SOAP_HD PairState pair_state(uint64_t seed, uint64_t offset, uint64_t pair) {
  const Words w = philox4x32_10(static_cast<uint32_t>(pair), static_cast<uint32_t>(pair >> 32),
                                static_cast<uint32_t>(offset), static_cast<uint32_t>(offset >> 32),
                                static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  const int64_t n1 = ((static_cast<int64_t>(w.x0 >> 5) << 26) | (w.x1 >> 6)) + 1;
  const int64_t n2 = (static_cast<int64_t>(w.x2 >> 5) << 26) | (w.x3 >> 6);
  constexpr double kTwoPow53Inv = 1.0 / 9007199254740992.0;  // 2^-53, exact
  const double radius = dsqrt(dmul(-2.0, log_basic(dmul(static_cast<double>(n1), kTwoPow53Inv))));
  // theta = 2 pi (quadrant/4 + turns), exact integer reduction, |turns| <= 1/8
  const int64_t quadrant = (n2 + (int64_t{1} << 50)) >> 51;  // 0..4
  const int64_t rest = n2 - (quadrant << 51);                // in [-2^50, 2^50)
  const double x = dmul(dmul(static_cast<double>(rest), kTwoPow53Inv), 6.283185307179586);
  return PairState{radius, x, quadrant};
}

// cos(theta) for the even element, sin(theta) = cos(theta - 90deg) for the odd one. With
// theta = quadrant * 90deg + x, cos(theta) is, by (quadrant mod 4):
// 0 -> cos x, 1 -> -sin x, 2 -> -cos x, 3 -> sin x
SOAP_HD int rotation(int64_t quadrant, uint64_t parity) {
  return static_cast<int>((quadrant + 3 * static_cast<int64_t>(parity)) & 3);
}

SOAP_HD double rotated(int which, double cos_x, double sin_x) {
  switch (which) {
    case 0: return cos_x;
    case 1: return -sin_x;
    case 2: return -cos_x;
    default: return sin_x;
  }
}

// Noise element `index` of stream (seed, offset).
SOAP_HD double normal(uint64_t seed, uint64_t offset, uint64_t index) {
  const PairState st = pair_state(seed, offset, index >> 1);
  const int which = rotation(st.quadrant, index & 1);
  const bool use_cos = (which & 1) == 0;
  const double c = use_cos ? cos_basic(st.x) : 0.0;
  const double s = use_cos ? 0.0 : sin_basic(st.x);
  return dmul(st.radius, rotated(which, c, s));
}

// Noise elements 2 pair and 2 pair + 1 (the same values as two normal() calls, at the cost of one).
SOAP_HD void normal_pair(uint64_t seed, uint64_t offset, uint64_t pair, double* even, double* odd) {
  const PairState st = pair_state(seed, offset, pair);
  const double c = cos_basic(st.x), s = sin_basic(st.x);
  *even = dmul(st.radius, rotated(rotation(st.quadrant, 0), c, s));
  *odd = dmul(st.radius, rotated(rotation(st.quadrant, 1), c, s));
}

// Calls f(j, xi) for j = 0 .. count-1 with xi = noise element first + j, one Philox call per pair.
template <typename F>
SOAP_HD void for_each_normal(uint64_t seed, uint64_t offset, int64_t first, int64_t count, F&& f) {
  int64_t j = 0;
  if (count > 0 && (first & 1)) {
    f(j, normal(seed, offset, static_cast<uint64_t>(first)));
    j = 1;
  }
  for (; j + 1 < count; j += 2) {
    double even, odd;
    normal_pair(seed, offset, static_cast<uint64_t>(first + j) >> 1, &even, &odd);
    f(j, even);
    f(j + 1, odd);
  }
  if (j < count) f(j, normal(seed, offset, static_cast<uint64_t>(first + j)));
}

}  // namespace philox
}  // namespace soap_cuda

#if defined(__GNUC__) && !defined(__clang__) && !defined(__CUDACC__)
#pragma GCC pop_options
#endif
