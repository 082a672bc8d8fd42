// native.mmapFile(path): maps a whole file into memory and returns it as an ArrayBuffer, without copying.
//
// Why here and not in JavaScript: fs.readFileSync refuses files over 2 GiB and copies everything up front,
// and the npm mmap packages do not build here or cannot map past 2 GiB (docs/architecture.md, "tensor-core"). A mapping costs nothing
// until a page is touched, so opening a multi-gigabyte checkpoint is instant and tensors are views into it.
//
// The mapping is MAP_PRIVATE with PROT_READ|PROT_WRITE: V8 treats every ArrayBuffer as writable, and a
// read-only mapping would turn a stray write into a segfault. Writes land in private copy-on-write pages and
// never reach the file. MAP_NORESERVE keeps the kernel from charging the whole file against the commit
// limit (a writable private mapping otherwise counts as if every page might be copied).
//
// The mapping lives as long as the ArrayBuffer: its finalizer unmaps when V8 collects the buffer. Caveat of
// MAP_PRIVATE: pages not yet copied still show the file, so a file must be replaced (write a new file and
// rename it over the old one, as saveSafetensors does), never rewritten or truncated in place while mapped.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "registry.h"

namespace {

struct Mapping {
  void* addr;
  size_t length;
};

void Unmap(Napi::Env /*env*/, void* /*data*/, Mapping* mapping) {
  munmap(mapping->addr, mapping->length);
  delete mapping;
}

Napi::Value Fail(Napi::Env env, const std::string& path, const char* what, int err) {
  Napi::Error error = Napi::Error::New(env, "mmapFile: cannot " + std::string(what) + " " + path + ": " +
                                               std::strerror(err));
  // Node's own fs errors carry these too; callers can test `code` instead of parsing the message.
  const char* code = err == ENOENT ? "ENOENT" : err == EACCES ? "EACCES" : err == EISDIR ? "EISDIR" : nullptr;
  if (code) error.Set("code", Napi::String::New(env, code));
  error.Set("errno", Napi::Number::New(env, err));
  error.Set("path", Napi::String::New(env, path));
  error.ThrowAsJavaScriptException();
  return env.Undefined();
}

Napi::Value MmapFile(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString()) {
    Napi::TypeError::New(env, "mmapFile: expected a file path (string)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  const std::string path = info[0].As<Napi::String>().Utf8Value();

  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Fail(env, path, "open", errno);

  struct stat st;
  if (fstat(fd, &st) != 0) {
    int err = errno;
    close(fd);
    return Fail(env, path, "stat", err);
  }
  // open() succeeds on a directory with O_RDONLY; mmap would then fail with a less helpful ENODEV.
  if (S_ISDIR(st.st_mode)) {
    close(fd);
    return Fail(env, path, "map", EISDIR);
  }
  if (!S_ISREG(st.st_mode)) {
    close(fd);
    Napi::Error::New(env, "mmapFile: cannot map " + path + ": not a regular file").ThrowAsJavaScriptException();
    return env.Undefined();
  }

  const size_t length = static_cast<size_t>(st.st_size);
  if (length == 0) {  // mmap rejects a zero length; an empty file is simply an empty buffer
    close(fd);
    return Napi::ArrayBuffer::New(env, 0);
  }

  void* addr = mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE, fd, 0);
  int map_err = errno;
  close(fd);  // the mapping keeps its own reference to the file
  if (addr == MAP_FAILED) return Fail(env, path, "map", map_err);

  // A hint that the pages will be read soon: the kernel starts readahead instead of faulting page by page.
  madvise(addr, length, MADV_WILLNEED);

  auto* mapping = new Mapping{addr, length};
  return Napi::ArrayBuffer::New(env, addr, length, Unmap, mapping);
}
TL_EXPORT("mmapFile", MmapFile);

}  // namespace
