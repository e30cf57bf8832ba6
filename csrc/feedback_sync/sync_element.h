// The element rule of every feedback sync, shared by the CPU and CUDA kernels so they cannot
// drift: b = scale * sign(w) * |m|, with sign(0) = 0 and NaN weights passed through as NaN.
// Products with sign in {-1, 0, 1} are exact, so every backend (and the Python reference)
// gives the same bits.
#pragma once

#include <c10/macros/Macros.h>

namespace soap_cuda {

template <typename T, typename Acc>
C10_HOST_DEVICE inline T sync_element(T w, T m, Acc scale, bool has_magnitude) {
  const Acc wa = static_cast<Acc>(w);
  if (wa != wa) return w;  // NaN weight: surface it rather than hide it behind sign(NaN) = 0
  const Acc sign = static_cast<Acc>((wa > Acc(0)) - (wa < Acc(0)));
  Acc mag = Acc(1);
  if (has_magnitude) {
    const Acc ma = static_cast<Acc>(m);
    mag = ma < Acc(0) ? -ma : ma;
  }
  return static_cast<T>(sign * mag * scale);
}

}  // namespace soap_cuda
