// Error messages built without std::ostream. TORCH_CHECK formats its arguments with an
// ostringstream, and streaming a number instantiates ostream code in this library; on one GPU
// machine's toolchain that code crashed (SIGSEGV inside ostream::_M_insert<long>, first seen
// on an H200 image with torch 2.11) the first time an error message held a number or a shape,
// so a bad argument killed the process instead of raising. Numbers here go through
// std::to_string / snprintf and only finished strings reach TORCH_CHECK.
#pragma once

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Exception.h>

#include <cstdio>
#include <string>
#include <string_view>
#include <type_traits>

namespace soap_cuda {
namespace message_detail {

inline void append(std::string& out, const char* s) { out += s; }
inline void append(std::string& out, const std::string& s) { out += s; }
inline void append(std::string& out, std::string_view s) { out += s; }
inline void append(std::string& out, c10::ScalarType t) { out += c10::toString(t); }
inline void append(std::string& out, const c10::Device& d) { out += d.str(); }

template <typename T, std::enable_if_t<std::is_integral_v<T> && !std::is_same_v<T, bool>, int> = 0>
void append(std::string& out, T v) {
  out += std::to_string(v);
}

inline void append(std::string& out, bool v) { out += v ? "true" : "false"; }

inline void append(std::string& out, double v) {  // as ostream's default (%g, 6 digits)
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%g", v);
  out += buf;
}

inline void append(std::string& out, c10::IntArrayRef values) {  // "[2, 3]", as c10 prints it
  out += '[';
  for (size_t i = 0; i < values.size(); ++i) {
    if (i > 0) out += ", ";
    out += std::to_string(values[i]);
  }
  out += ']';
}

}  // namespace message_detail

template <typename... Args>
std::string message(const Args&... args) {
  std::string out;
  (message_detail::append(out, args), ...);
  return out;
}

}  // namespace soap_cuda

// TORCH_CHECK with the message built by soap_cuda::message (only when the check fails).
#define SOAP_CHECK(cond, ...) TORCH_CHECK(cond, ::soap_cuda::message(__VA_ARGS__))
