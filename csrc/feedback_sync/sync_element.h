// The element rule of every feedback sync, shared by the CPU and CUDA kernels so they cannot
// drift: b = scale * sign(w) * |m|, with sign(0) = 0 and NaN weights passed through as NaN.
// Products with sign in {-1, 0, 1} are exact, so every backend (and the Python reference)
// gives the same bits. The body is branch-free (selects only) so CPU loops vectorise.
#pragma once

#include <c10/macros/Macros.h>

#include <cmath>

namespace soap_cuda {

template <typename T, typename Acc>
C10_HOST_DEVICE inline T sync_element(T w, T m, Acc scale, bool has_magnitude) {
  const Acc wa = static_cast<Acc>(w);
  const Acc sign = static_cast<Acc>(wa > Acc(0)) - static_cast<Acc>(wa < Acc(0));
  const Acc ma = static_cast<Acc>(m);
  // a true |m| (fabs clears the sign bit): -0.0 gives +0.0, as the reference's abs() does
#ifdef __CUDA_ARCH__
  const Acc mag = has_magnitude ? ::fabs(ma) : Acc(1);
#else
  const Acc mag = has_magnitude ? std::fabs(ma) : Acc(1);
#endif
  const Acc value = sign * mag * scale;
  // NaN weight: surface it rather than hide it behind sign(NaN) = 0
  return static_cast<T>(wa != wa ? wa : value);
}

}  // namespace soap_cuda
