// Argument checking shared by the bindings. The TypeScript ops validate first; these checks keep a wrong
// call from the SDK or a test from reading out of bounds.
#pragma once

#include <string>

#include "registry.h"
#include "thread_pool.h"

// Parses argument i as a tensor view into `var`, returning undefined from the binding if it is not one.
#define TL_TENSOR_ARG(var, i, op)                          \
  tl::TensorRef var = tl::tensor_arg(info, i, op);         \
  if (info.Env().IsExceptionPending()) return info.Env().Undefined()

namespace tl {

inline Napi::Value throw_type_error(Napi::Env env, const std::string& message) {
  Napi::TypeError::New(env, message).ThrowAsJavaScriptException();
  return env.Undefined();
}

inline Napi::Value throw_range_error(Napi::Env env, const std::string& message) {
  Napi::RangeError::New(env, message).ThrowAsJavaScriptException();
  return env.Undefined();
}

inline bool same_shape(const TensorRef& a, const TensorRef& b) { return a.shape == b.shape; }

}  // namespace tl
