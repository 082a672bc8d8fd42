// tiny-llm extension SDK: write native kernels against tensor-core tensors.
//
// A kernel in another package's addon includes this header (header-only), receives tensors from JavaScript
// as views (`tensor.native()` on the TypeScript side), and runs its work on tensor-core's thread pool, so
// that every addon in the process shares one pool. Usage, in the addon's module init:
//
//   Napi::Object Init(Napi::Env env, Napi::Object exports) {
//     tl::sdk::connect(env);              // binds to @tiny-llm/tensor-core's pool; once per addon
//     exports["scaleInto"] = Napi::Function::New(env, ScaleInto);
//     return exports;
//   }
//
// and in a kernel:
//
//   tl::TensorRef x = tl::tensor_arg(info, 0, "scaleInto");  // checks it is a tensor view, names the op
//   tl::require_contiguous(x, "scaleInto", "x");
//   tl::parallel_for(x.numel(), 4096, [&](int64_t begin, int64_t end) { ... });
//
// The JavaScript side allocates outputs (`empty(shape, {dtype})`) and passes them in, so kernels never
// allocate tensors themselves.
#pragma once

#include <napi.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace tl {

// The dtype codes shared with the TypeScript side (src/dtype.ts).
enum class DType : int32_t { F32 = 0, F16 = 1, BF16 = 2, I32 = 3, U32 = 4, U8 = 5, Bool = 6 };

inline int64_t dtype_size(DType d) {
  switch (d) {
    case DType::F32: case DType::I32: case DType::U32: return 4;
    case DType::F16: case DType::BF16: return 2;
    default: return 1;
  }
}

inline const char* dtype_name(DType d) {
  static const char* names[] = {"float32", "float16", "bfloat16", "int32", "uint32", "uint8", "bool"};
  int i = static_cast<int>(d);
  return i >= 0 && i < 7 ? names[i] : "unknown";
}

// ---- bf16 / f16 <-> f32, bit-exact with round-to-nearest-even -------------------------------------------------

inline float bits_to_f32(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
inline uint32_t f32_to_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }

inline float bf16_to_f32(uint16_t h) { return bits_to_f32(static_cast<uint32_t>(h) << 16); }

inline uint16_t f32_to_bf16(float f) {
  uint32_t u = f32_to_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // quiet NaN, keep sign
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest, ties to even
  return static_cast<uint16_t>(u >> 16);
}

inline float f16_to_f32(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  if (exp == 0x1f) return bits_to_f32(sign | 0x7f800000u | (mant << 13));  // inf / NaN
  if (exp == 0) {
    if (mant == 0) return bits_to_f32(sign);
    // Subnormal: value = mant * 2^-24, exact in f32.
    float v = static_cast<float>(mant) * 5.9604644775390625e-8f;
    return sign ? -v : v;
  }
  return bits_to_f32(sign | ((exp + 112u) << 23) | (mant << 13));
}

inline uint16_t f32_to_f16(float f) {
  uint32_t u = f32_to_bits(f);
  uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return sign | 0x7e00u | static_cast<uint16_t>((abs >> 13) & 0x3ffu);  // NaN
  if (abs >= 0x477ff000u) return sign | 0x7c00u;  // rounds to >= 65520: infinity
  if (abs < 0x38800000u) {
    // Result is subnormal (or zero): shift the full significand into place, rounding to nearest even.
    if (abs < 0x33000000u) return sign;  // below half the smallest subnormal
    uint32_t exp = abs >> 23;
    uint32_t mant = (abs & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126u - exp;  // 14..24
    uint32_t half = 1u << (shift - 1);
    uint32_t rest = mant & ((1u << shift) - 1);
    uint32_t q = mant >> shift;
    if (rest > half || (rest == half && (q & 1u))) q++;
    return sign | static_cast<uint16_t>(q);
  }
  uint32_t r = abs + 0xfffu + ((abs >> 13) & 1u);  // round to nearest even on the 13 dropped bits
  return sign | static_cast<uint16_t>(((r >> 13) - (112u << 10)) & 0xffffu);
}

// Load element i (already multiplied out to an element offset) of any dtype as float / double.
inline float load_f32(const void* base, DType d, int64_t i) {
  switch (d) {
    case DType::F32: return static_cast<const float*>(base)[i];
    case DType::F16: return f16_to_f32(static_cast<const uint16_t*>(base)[i]);
    case DType::BF16: return bf16_to_f32(static_cast<const uint16_t*>(base)[i]);
    case DType::I32: return static_cast<float>(static_cast<const int32_t*>(base)[i]);
    case DType::U32: return static_cast<float>(static_cast<const uint32_t*>(base)[i]);
    default: return static_cast<float>(static_cast<const uint8_t*>(base)[i]);
  }
}

inline double load_f64(const void* base, DType d, int64_t i) {
  switch (d) {
    case DType::I32: return static_cast<const int32_t*>(base)[i];
    case DType::U32: return static_cast<const uint32_t*>(base)[i];
    case DType::U8: case DType::Bool: return static_cast<const uint8_t*>(base)[i];
    default: return load_f32(base, d, i);
  }
}

// Store a double into any dtype. Integer stores truncate toward zero and saturate, as a C cast would not.
inline void store_f64(void* base, DType d, int64_t i, double v) {
  switch (d) {
    case DType::F32: static_cast<float*>(base)[i] = static_cast<float>(v); break;
    case DType::F16: static_cast<uint16_t*>(base)[i] = f32_to_f16(static_cast<float>(v)); break;
    case DType::BF16: static_cast<uint16_t*>(base)[i] = f32_to_bf16(static_cast<float>(v)); break;
    case DType::I32: {
      double c = v != v ? 0 : v < -2147483648.0 ? -2147483648.0 : v > 2147483647.0 ? 2147483647.0 : v;
      static_cast<int32_t*>(base)[i] = static_cast<int32_t>(c);
      break;
    }
    case DType::U32: {
      double c = v != v ? 0 : v < 0 ? 0 : v > 4294967295.0 ? 4294967295.0 : v;
      static_cast<uint32_t*>(base)[i] = static_cast<uint32_t>(c);
      break;
    }
    case DType::U8: {
      double c = v != v ? 0 : v < 0 ? 0 : v > 255.0 ? 255.0 : v;
      static_cast<uint8_t*>(base)[i] = static_cast<uint8_t>(c);
      break;
    }
    case DType::Bool: static_cast<uint8_t*>(base)[i] = v != 0 ? 1 : 0; break;
  }
}

// ---- Run-time SIMD choice ------------------------------------------------------------------------------------------
//
// Addons are built for the baseline ISA (never -march=native: a cached .node from another CPU would die with
// SIGILL), so SIMD kernels are compiled with target attributes (tiny_llm/simd.h) and called only when the level
// in use allows them. The levels, each a superset of the one before:
//   scalar   portable loops, any CPU
//   avx2     AVX2 + FMA + F16C: 8 floats per register
//   avx512   AVX-512 F, BW, VL and DQ on top: 16 floats per register
// The level in use is the best the CPU has, unless TINY_LLM_SIMD=scalar|avx2|avx512 forces one (so that tests and
// benchmarks reach every path on one machine). A level the CPU lacks, or a misspelt one, is an error when
// tensor-core loads (and when an addon connects to the SDK), not an illegal instruction later.
// TINY_LLM_NO_SIMD=1 is the older spelling of TINY_LLM_SIMD=scalar.
enum class SimdLevel : int32_t { Scalar = 0, Avx2 = 1, Avx512 = 2 };

inline const char* simd_level_name(SimdLevel level) {
  switch (level) {
    case SimdLevel::Avx512: return "avx512";
    case SimdLevel::Avx2: return "avx2";
    default: return "scalar";
  }
}

// What the CPU supports, as far as the OS lets it be used (the wide registers must be saved on context
// switches). The VNNI and BF16 extensions pick no level: kernels that use them check them on top of one.
struct CpuFeatures {
  bool avx2 = false, fma = false, f16c = false;
  bool avx512f = false, avx512bw = false, avx512vl = false, avx512dq = false;
  bool avx512vnni = false, avx512bf16 = false, avxvnni = false;
};

inline CpuFeatures detect_cpu_features() {
  CpuFeatures f;
#if defined(__x86_64__)
  __builtin_cpu_init();
  f.avx2 = __builtin_cpu_supports("avx2");
  f.fma = __builtin_cpu_supports("fma");
  f.f16c = __builtin_cpu_supports("f16c");
  f.avx512f = __builtin_cpu_supports("avx512f");
  f.avx512bw = __builtin_cpu_supports("avx512bw");
  f.avx512vl = __builtin_cpu_supports("avx512vl");
  f.avx512dq = __builtin_cpu_supports("avx512dq");
  f.avx512vnni = __builtin_cpu_supports("avx512vnni");
  f.avx512bf16 = __builtin_cpu_supports("avx512bf16");
  f.avxvnni = __builtin_cpu_supports("avxvnni");
#endif
  return f;
}

inline const CpuFeatures& cpu_features() {
  static const CpuFeatures f = detect_cpu_features();
  return f;
}

// The features a level needs that `f` lacks, as "avx512bw, avx512dq" (empty when it has them all).
inline std::string missing_for_level(SimdLevel level, const CpuFeatures& f) {
  std::string missing;
  auto need = [&](bool has, const char* name) {
    if (!has) missing += (missing.empty() ? "" : ", ") + std::string(name);
  };
  if (level >= SimdLevel::Avx2) {
    need(f.avx2, "avx2");
    need(f.fma, "fma");
    need(f.f16c, "f16c");
  }
  if (level >= SimdLevel::Avx512) {
    need(f.avx512f, "avx512f");
    need(f.avx512bw, "avx512bw");
    need(f.avx512vl, "avx512vl");
    need(f.avx512dq, "avx512dq");
  }
  return missing;
}

inline SimdLevel best_simd_level(const CpuFeatures& f) {
  if (missing_for_level(SimdLevel::Avx512, f).empty()) return SimdLevel::Avx512;
  if (missing_for_level(SimdLevel::Avx2, f).empty()) return SimdLevel::Avx2;
  return SimdLevel::Scalar;
}

// "scalar", "avx2" or "avx512" into *level; false for any other name.
inline bool parse_simd_level(const std::string& name, SimdLevel* level) {
  for (SimdLevel l : {SimdLevel::Scalar, SimdLevel::Avx2, SimdLevel::Avx512}) {
    if (name == simd_level_name(l)) {
      *level = l;
      return true;
    }
  }
  return false;
}

struct SimdChoice {
  SimdLevel level = SimdLevel::Scalar;
  std::string error;  // why the request can't be honoured (the level is then scalar), or empty
};

// The level that the values of TINY_LLM_SIMD (`request`) and TINY_LLM_NO_SIMD (`no_simd`) select on a CPU with
// features `f`. Null or empty values ask for nothing.
inline SimdChoice choose_simd_level(const char* request, const char* no_simd, const CpuFeatures& f) {
  const SimdLevel best = best_simd_level(f);
  const bool scalar_asked = no_simd != nullptr && no_simd[0] != '\0' && std::strcmp(no_simd, "0") != 0;
  if (request == nullptr || request[0] == '\0') return {scalar_asked ? SimdLevel::Scalar : best, ""};
  const std::string asked_name = request;
  SimdLevel asked;
  if (!parse_simd_level(asked_name, &asked))
    return {SimdLevel::Scalar, "TINY_LLM_SIMD=" + asked_name + " is not a level: use scalar, avx2 or avx512, or " +
                                   "leave it unset for the best this CPU has (" + simd_level_name(best) + ")"};
  if (scalar_asked && asked != SimdLevel::Scalar)
    return {SimdLevel::Scalar, "TINY_LLM_NO_SIMD=" + std::string(no_simd) + " asks for the scalar kernels but " +
                                   "TINY_LLM_SIMD=" + asked_name + " for others: set only TINY_LLM_SIMD"};
  if (asked > best)
    return {SimdLevel::Scalar, "TINY_LLM_SIMD=" + asked_name + " asks for kernels this CPU cannot run (it lacks " +
                                   missing_for_level(asked, f) + "): use TINY_LLM_SIMD=" + simd_level_name(best) +
                                   " or lower, or leave it unset"};
  return {asked, ""};
}

// The choice of this process, made once from the environment.
inline const SimdChoice& simd_choice() {
  static const SimdChoice c =
      choose_simd_level(std::getenv("TINY_LLM_SIMD"), std::getenv("TINY_LLM_NO_SIMD"), cpu_features());
  return c;
}

#ifdef TL_CORE
// Inside tensor-core the level can also be changed at run time (native.setSimdLevel, for benchmarks that set
// levels side by side); it starts as simd_choice().level (src/cpu_features.cc).
SimdLevel core_simd_level();
#endif

// The level every SIMD kernel checks before it runs.
inline SimdLevel simd_level() {
#ifdef TL_CORE
  return core_simd_level();
#else
  return simd_choice().level;
#endif
}

// The avx2 level (AVX2 + FMA + F16C) or above: TL_AVX2 kernels may run.
inline bool has_avx2_fma() { return simd_level() >= SimdLevel::Avx2; }

// F16C (vcvtph2ps) is part of the avx2 level; this older query is kept for the kernels that ask for it.
inline bool has_f16c() { return has_avx2_fma(); }

// The avx512 level: TL_AVX512 kernels may run.
inline bool has_avx512() { return simd_level() >= SimdLevel::Avx512; }

// ---- Scratch memory -------------------------------------------------------------------------------------

// A growable 64-byte-aligned float buffer. A kernel keeps one (per thread) across calls, so steady-state calls
// never allocate: fresh pages cost first-touch faults (slow in this VM), and aligned panels allow aligned loads.
class ScratchBuffer {
 public:
  ~ScratchBuffer() { std::free(p_); }
  float* get(int64_t n) {
    size_t bytes = (static_cast<size_t>(std::max<int64_t>(n, 16)) * sizeof(float) + 63) & ~size_t(63);
    if (bytes > cap_) {
      std::free(p_);
      p_ = static_cast<float*>(std::aligned_alloc(64, bytes));
      if (!p_) { cap_ = 0; throw std::bad_alloc(); }
      cap_ = bytes;
    }
    return p_;
  }

 private:
  float* p_ = nullptr;
  size_t cap_ = 0;
};

// ---- Tensor views passed from JavaScript ------------------------------------------------------------------------

// A strided view of a tensor's storage. `data` points at the view's first element; strides are in elements.
struct TensorRef {
  void* data = nullptr;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  std::vector<int64_t> strides;

  int ndim() const { return static_cast<int>(shape.size()); }
  int64_t numel() const {
    int64_t n = 1;
    for (int64_t s : shape) n *= s;
    return n;
  }
  bool contiguous() const {
    int64_t expected = 1;
    for (int i = ndim() - 1; i >= 0; --i) {
      if (shape[i] != 1 && strides[i] != expected) return false;
      expected *= shape[i];
    }
    return true;
  }
  template <typename T> T* ptr() const { return static_cast<T*>(data); }
  std::string describe() const {
    std::string s = std::string(dtype_name(dtype)) + "[";
    for (int i = 0; i < ndim(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
  }
};

// Checks that the view stays inside its ArrayBuffer and points `data` at its first element.
inline bool finish_tensor_ref(TensorRef& t, Napi::ArrayBuffer ab, int64_t byte_offset) {
  int64_t lo = 0, hi = 0;  // extent of the view in elements, relative to its first element
  for (int i = 0; i < t.ndim(); ++i) {
    if (t.shape[i] == 0) return (t.data = ab.Data(), true);
    int64_t reach = (t.shape[i] - 1) * t.strides[i];
    (reach < 0 ? lo : hi) += reach;
  }
  int64_t es = dtype_size(t.dtype);
  if (byte_offset + lo * es < 0 || byte_offset + (hi + 1) * es > static_cast<int64_t>(ab.ByteLength())) return false;
  t.data = static_cast<uint8_t*>(ab.Data()) + byte_offset;
  return true;
}

// Parses a tensor view. Two forms are accepted:
//  - what `Tensor.native()` builds: [ArrayBuffer, Float64Array [byteOffset, dtype, ndim, ...shape, ...strides]],
//    which costs two element reads (property lookups by name would dominate the cost of a small op);
//  - a plain object { buffer, byteOffset, dtype, shape, strides }, convenient in tests and hand-written calls.
inline TensorRef to_tensor_ref(Napi::Env env, Napi::Value value, const char* op, int index) {
  auto fail = [&](const std::string& why) -> TensorRef {
    Napi::TypeError::New(env, std::string(op) + ": argument " + std::to_string(index) + " " + why)
        .ThrowAsJavaScriptException();
    return TensorRef{};
  };
  TensorRef t;
  Napi::Value buffer;
  int64_t byte_offset = 0;
  if (value.IsArray()) {
    Napi::Array pair = value.As<Napi::Array>();
    buffer = pair.Get(0u);
    Napi::Value meta_value = pair.Get(1u);
    if (!meta_value.IsTypedArray() || meta_value.As<Napi::TypedArray>().TypedArrayType() != napi_float64_array)
      return fail("is not a tensor view (pass tensor.native())");
    Napi::Float64Array meta = meta_value.As<Napi::Float64Array>();
    const double* m = meta.Data();
    size_t n = meta.ElementLength();
    if (n < 3 || n != 3 + 2 * static_cast<size_t>(m[2])) return fail("has a malformed view descriptor");
    byte_offset = static_cast<int64_t>(m[0]);
    t.dtype = static_cast<DType>(static_cast<int32_t>(m[1]));
    int nd = static_cast<int>(m[2]);
    t.shape.assign(m + 3, m + 3 + nd);
    t.strides.assign(m + 3 + nd, m + 3 + 2 * nd);
  } else if (value.IsObject()) {
    Napi::Object obj = value.As<Napi::Object>();
    buffer = obj.Get("buffer");
    Napi::Value shape_v = obj.Get("shape"), strides_v = obj.Get("strides");
    if (!shape_v.IsArray() || !strides_v.IsArray()) return fail("is not a tensor view (pass tensor.native())");
    Napi::Array shape = shape_v.As<Napi::Array>(), strides = strides_v.As<Napi::Array>();
    if (shape.Length() != strides.Length()) return fail("has shape and strides of different lengths");
    byte_offset = obj.Get("byteOffset").ToNumber().Int64Value();
    t.dtype = static_cast<DType>(obj.Get("dtype").ToNumber().Int32Value());
    for (uint32_t i = 0; i < shape.Length(); ++i) {
      t.shape.push_back(shape.Get(i).ToNumber().Int64Value());
      t.strides.push_back(strides.Get(i).ToNumber().Int64Value());
    }
  } else {
    return fail("is not a tensor view (pass tensor.native())");
  }
  if (!buffer.IsArrayBuffer()) return fail("has no ArrayBuffer storage (is it a GPU tensor?)");
  if (static_cast<int32_t>(t.dtype) < 0 || static_cast<int32_t>(t.dtype) > 6) return fail("has an unknown dtype code");
  for (size_t i = 0; i < t.shape.size(); ++i)
    if (t.shape[i] < 0) return fail("has a negative dimension");
  if (!finish_tensor_ref(t, buffer.As<Napi::ArrayBuffer>(), byte_offset)) return fail("reaches outside its storage");
  return t;
}

inline TensorRef tensor_arg(const Napi::CallbackInfo& info, int index, const char* op) {
  return to_tensor_ref(info.Env(), info[index], op, index);
}

inline bool require_contiguous(Napi::Env env, const TensorRef& t, const char* op, const char* name) {
  if (t.contiguous()) return true;
  Napi::TypeError::New(env, std::string(op) + ": " + name + " must be contiguous, got strides of " + t.describe())
      .ThrowAsJavaScriptException();
  return false;
}

// ---- The shared thread pool ---------------------------------------------------------------------------------------

// fn(ctx, begin, end) runs on the pool's threads over [0, n) split in chunks of at least `grain` items.
using RangeFn = void (*)(void* ctx, int64_t begin, int64_t end);

// The table tensor-core's addon exports (`sdkTable()`), so other addons reach the same pool.
struct SdkTable {
  int32_t version;
  void (*parallel_for)(int64_t n, int64_t grain, RangeFn fn, void* ctx);
  int32_t (*num_threads)();
  // Since version 2: tensor-core's GEMM (native.matmul), see tl::matmul below.
  const char* (*matmul)(const TensorRef* a, const TensorRef* b, const TensorRef* out);
};
constexpr int32_t kSdkVersion = 2;

namespace sdk {
inline const SdkTable*& table() {
  static const SdkTable* t = nullptr;
  return t;
}

// Binds this addon to tensor-core's pool: require('@tiny-llm/tensor-core/build') is done on the JS side,
// which passes `sdkTable()` in; or call connect(env, value) with that External yourself.
inline bool connect(Napi::Env env, Napi::Value external) {
  if (!external.IsExternal()) {
    Napi::TypeError::New(env, "tiny-llm SDK: expected the External from tensor-core's sdkTable()")
        .ThrowAsJavaScriptException();
    return false;
  }
  auto* t = external.As<Napi::External<SdkTable>>().Data();
  if (t->version != kSdkVersion) {
    Napi::Error::New(env, "tiny-llm SDK: version mismatch (rebuild this addon against the installed tensor-core)")
        .ThrowAsJavaScriptException();
    return false;
  }
  if (!simd_choice().error.empty()) {
    Napi::Error::New(env, "tiny-llm SDK: " + simd_choice().error).ThrowAsJavaScriptException();
    return false;
  }
  table() = t;
  return true;
}
}  // namespace sdk

#ifdef TL_CORE
// Inside tensor-core the pool is called directly (src/thread_pool.cc).
void core_parallel_for(int64_t n, int64_t grain, RangeFn fn, void* ctx);
int32_t core_num_threads();
// The GEMM behind native.matmul (src/matmul.cc).
const char* core_matmul(const TensorRef* a, const TensorRef* b, const TensorRef* out);
#endif

inline void parallel_for_raw(int64_t n, int64_t grain, RangeFn fn, void* ctx) {
#ifdef TL_CORE
  core_parallel_for(n, grain, fn, ctx);
#else
  if (sdk::table()) {
    sdk::table()->parallel_for(n, grain, fn, ctx);
  } else if (n > 0) {
    fn(ctx, 0, n);  // not connected: run inline rather than fail
  }
#endif
}

// Runs body(begin, end) over [0, n) on the shared pool, chunks of at least `grain` items. Blocks until done.
template <typename Body> void parallel_for(int64_t n, int64_t grain, const Body& body) {
  parallel_for_raw(
      n, grain,
      [](void* ctx, int64_t b, int64_t e) { (*static_cast<const Body*>(ctx))(b, e); },
      const_cast<Body*>(&body));
}

inline int32_t num_threads() {
#ifdef TL_CORE
  return core_num_threads();
#else
  return sdk::table() ? sdk::table()->num_threads() : 1;
#endif
}

// Runs task(i) for every i in [0, n) on `threads` threads. Tasks are handed out one at a time from a shared
// counter rather than split statically: the machine is shared, and a thread the OS delays then simply takes
// fewer tasks instead of holding the others up at the end of the region. An exception (a failed buffer
// allocation) must not escape a pool thread: it stops the hand-out and is rethrown on the calling thread.
template <class Task> void run_tasks(int64_t n, int threads, const Task& task) {
  if (n <= 0) return;
  if (threads <= 1 || n == 1) {
    for (int64_t i = 0; i < n; ++i) task(i);
    return;
  }
  std::atomic<int64_t> next{0};
  std::atomic<bool> failed{false};
  std::exception_ptr error;
  parallel_for(std::min<int64_t>(threads, n), 1, [&](int64_t, int64_t) {
    try {
      for (int64_t i = next.fetch_add(1); i < n; i = next.fetch_add(1)) task(i);
    } catch (...) {
      if (!failed.exchange(true)) error = std::current_exception();
      next.store(n);
    }
  });
  if (error) std::rethrow_exception(error);
}

// [begin, end) of part t when `total` items are cut into `parts` parts whose sizes differ by at most one.
inline int64_t part_begin(int64_t total, int64_t parts, int64_t t) { return total * t / parts; }

// run_tasks for tasks that stream memory in order (the GEMV's runs of W rows): thread t first takes, in order,
// the tasks of the t-th of `threads` contiguous parts of [0, n), and only then helps with the others' from where
// they stand. Each thread's reads then form one long stream that the prefetchers follow, where tasks dealt out
// in turn make every thread jump at every task, and a delayed thread still ends up with less work. A Qwen2-0.5B
// decode step (988 MB of bf16 weights, AVX-512) went from 0.83 to 0.92 of the read bandwidth measured in the
// same rounds (medians of 5, interleaved with the dealt-out form in one process; a busy machine).
template <class Task> void run_tasks_in_parts(int64_t n, int threads, const Task& task) {
  if (threads <= 1 || n <= threads) return run_tasks(n, threads, task);
  struct alignas(64) Part {
    std::atomic<int64_t> next;
    int64_t end;
  };
  std::unique_ptr<Part[]> parts(new Part[threads]);
  for (int p = 0; p < threads; ++p) {
    parts[p].next.store(part_begin(n, threads, p));
    parts[p].end = part_begin(n, threads, p + 1);
  }
  std::atomic<bool> failed{false};
  std::exception_ptr error;
  parallel_for(threads, 1, [&](int64_t first, int64_t last) {
    try {
      for (int64_t own = first; own < last; ++own)
        for (int q = 0; q < threads; ++q) {
          Part& part = parts[(own + q) % threads];
          for (int64_t i = part.next.fetch_add(1); i < part.end; i = part.next.fetch_add(1)) task(i);
        }
    } catch (...) {
      if (!failed.exchange(true)) error = std::current_exception();
      for (int p = 0; p < threads; ++p) parts[p].next.store(parts[p].end);
    }
  });
  if (error) std::rethrow_exception(error);
}

// out = a @ b with tensor-core's GEMM, the kernel behind native.matmul: a [...batch, M, K] and b [...batch, K, N]
// float32 / bfloat16 / float16 with any strides (a linear layer's weight W [N, K] passed as b with strides
// {1, K} is the layout it is tuned for), out [...batch, M, N] contiguous float32, overwritten. Returns nullptr, or
// what is wrong with the arguments (the caller throws, naming its own op). It runs on the pool itself, so call
// it from the calling thread, not from inside parallel_for (a nested region would run on one thread).
inline const char* matmul(const TensorRef& a, const TensorRef& b, const TensorRef& out) {
#ifdef TL_CORE
  return core_matmul(&a, &b, &out);
#else
  if (!sdk::table()) return "the tiny-llm SDK is not connected (call sdk::connect first)";
  return sdk::table()->matmul(&a, &b, &out);
#endif
}

}  // namespace tl
