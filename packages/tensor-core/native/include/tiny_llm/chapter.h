// What the course's week addons share (packages/week2, week3, and the reference builds of their kernels): the
// error a kernel stub throws until it is written, and the binding code around a kernel call that turns it into
// the JavaScript error the tests, the grader and the engine recognise as "not started".
#pragma once

#include <tiny_llm/extension.h>

#include <stdexcept>
#include <string>

namespace tl {

// What a chapter's kernel throws until it is written; its message points at the week's pages.
struct NotImplemented : std::runtime_error {
  std::string chapter;
  NotImplemented(const std::string& chapter_id, const std::string& what)
      : std::runtime_error("NotImplemented: " + what + " (chapter " + chapter_id + "). Read docs/week" +
                           chapter_id.substr(0, chapter_id.find('.')) + "/ and fill in the stub."),
        chapter(chapter_id) {}
};

// The addon's `connect` (tc.loadExtension calls it): binds it to tensor-core's thread pool.
inline Napi::Value connect_addon(const Napi::CallbackInfo& info) {
  sdk::connect(info.Env(), info[0]);
  return info.Env().Undefined();
}

// Runs a kernel, turning what it throws into JavaScript errors: NotImplemented keeps its name and chapter, any
// other error is prefixed with the op. Returns undefined for the binding to return.
template <class Kernel> Napi::Value run_kernel(Napi::Env env, const char* op, const Kernel& kernel) {
  try {
    kernel();
  } catch (const NotImplemented& e) {
    Napi::Error error = Napi::Error::New(env, e.what());
    error.Set("name", Napi::String::New(env, "NotImplemented"));
    error.Set("chapter", Napi::String::New(env, e.chapter));
    error.ThrowAsJavaScriptException();
  } catch (const std::exception& e) {
    Napi::Error::New(env, std::string(op) + ": " + e.what()).ThrowAsJavaScriptException();
  }
  return env.Undefined();
}

}  // namespace tl
