// Each kernel file registers its JavaScript bindings here, so adding a file needs no edit elsewhere.
#pragma once

#include <napi.h>

#include <utility>
#include <vector>

namespace tl {

using Binding = Napi::Value (*)(const Napi::CallbackInfo&);

inline std::vector<std::pair<const char*, Binding>>& registered_bindings() {
  static std::vector<std::pair<const char*, Binding>> all;
  return all;
}

struct RegisterBinding {
  RegisterBinding(const char* name, Binding fn) { registered_bindings().emplace_back(name, fn); }
};

}  // namespace tl

// TL_EXPORT("jsName", CppFunction) at file scope makes CppFunction callable as native.jsName.
#define TL_EXPORT(js_name, fn) static ::tl::RegisterBinding tl_binding_##fn(js_name, fn)
