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
#include <cstdint>
#include <cstring>
#include <map>
#include <mutex>
#include <string>

#include "registry.h"

namespace {

struct Mapping {
  void* addr;
  size_t length;
};

// The live mappings by address, for releaseMappedPages to check what it is given.
std::mutex g_mappings_mutex;
std::map<uintptr_t, size_t> g_mappings;

void Unmap(Napi::Env /*env*/, void* /*data*/, Mapping* mapping) {
  {
    std::lock_guard<std::mutex> lock(g_mappings_mutex);
    g_mappings.erase(reinterpret_cast<uintptr_t>(mapping->addr));
  }
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
  {
    std::lock_guard<std::mutex> lock(g_mappings_mutex);
    g_mappings[reinterpret_cast<uintptr_t>(addr)] = length;
  }
  return Napi::ArrayBuffer::New(env, addr, length, Unmap, mapping);
}
TL_EXPORT("mmapFile", MmapFile);

// native.releaseMappedPages(arrayBuffer, byteOffset, byteLength): lets the kernel take back the resident pages of
// that range of a mapped file (the whole pages inside it), once what they hold has been copied elsewhere (the
// engine packs a weight into its own layout at load: without this the file's pages and the copy would both count).
// A page touched again is read from the file again: its values never change, since nothing writes to a mapped
// checkpoint. Returns the bytes released; 0 for a buffer that is not a mapping of mmapFile's.
Napi::Value ReleaseMappedPages(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 3 || !info[0].IsArrayBuffer() || !info[1].IsNumber() || !info[2].IsNumber()) {
    Napi::TypeError::New(env, "releaseMappedPages: expected (arrayBuffer, byteOffset, byteLength)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::ArrayBuffer buffer = info[0].As<Napi::ArrayBuffer>();
  const int64_t offset = info[1].As<Napi::Number>().Int64Value(), length = info[2].As<Napi::Number>().Int64Value();
  const auto base = reinterpret_cast<uintptr_t>(buffer.Data());
  if (offset < 0 || length <= 0 || static_cast<size_t>(offset + length) > buffer.ByteLength()) return Napi::Number::New(env, 0);
  {
    std::lock_guard<std::mutex> lock(g_mappings_mutex);
    if (g_mappings.count(base) == 0) return Napi::Number::New(env, 0);
  }
  const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const uintptr_t begin = (base + offset + page - 1) / page * page, end = (base + offset + length) / page * page;
  if (end <= begin || madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED) != 0) return Napi::Number::New(env, 0);
  return Napi::Number::New(env, static_cast<double>(end - begin));
}
TL_EXPORT("releaseMappedPages", ReleaseMappedPages);

}  // namespace
