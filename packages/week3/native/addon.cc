// The week 3 addon's bindings: JavaScript calls these with tensor views (tensor.native()), they check every
// argument and call the kernels of kernels.h. Given, not part of a chapter: the kernels are the chapters' work.
#include "kernels.h"

#include <string>

namespace {

using tl::DType;

// Throws `why` as a RangeError naming the op; returns undefined for the binding to return.
Napi::Value fail(Napi::Env env, const char* op, const std::string& why) {
  Napi::RangeError::New(env, std::string(op) + ": " + why).ThrowAsJavaScriptException();
  return env.Undefined();
}

// pagedAttention(q [B, Hq, D], keyPages [N, Hkv, P, D], valuePages, blockTables int32 [B, M], lengths int32 [B],
//                out [B, Hq, D], scale)
// Every page a row reads is checked against the pool here: a block table that points outside it (a bug in the
// bookkeeping) is an error naming the row, the block and the page, never a read of someone else's memory.
Napi::Value PagedAttention(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* op = "pagedAttention";
  tl::TensorRef t[6];
  for (int i = 0; i < 6; ++i) {
    t[i] = tl::tensor_arg(info, i, op);
    if (env.IsExceptionPending()) return env.Undefined();
  }
  const tl::TensorRef &q = t[0], &keys = t[1], &values = t[2], &tables = t[3], &lengths = t[4], &out = t[5];
  const float scale = info[6].ToNumber().FloatValue();
  const std::string shapes = " (q " + q.describe() + ", pages " + keys.describe() + ", block tables " + tables.describe() +
                             ", lengths " + lengths.describe() + ", out " + out.describe() + ")";
  if (q.ndim() != 3 || keys.ndim() != 4 || values.shape != keys.shape || tables.ndim() != 2 || lengths.ndim() != 1 || out.shape != q.shape)
    return fail(env, op, "expected q [B, Hq, D], key and value pages [N, Hkv, P, D], block tables [B, M], lengths [B], out like q" + shapes);
  if (q.dtype != DType::F32 || keys.dtype != DType::F32 || values.dtype != DType::F32 || out.dtype != DType::F32 ||
      tables.dtype != DType::I32 || lengths.dtype != DType::I32)
    return fail(env, op, "q, the pages and out must be float32; block tables and lengths int32" + shapes);
  if (!q.contiguous() || !keys.contiguous() || !values.contiguous() || !tables.contiguous() || !lengths.contiguous() || !out.contiguous())
    return fail(env, op, "every operand must be contiguous" + shapes);
  const int64_t B = q.shape[0], Hq = q.shape[1], D = q.shape[2];
  const int64_t N = keys.shape[0], Hkv = keys.shape[1], P = keys.shape[2], M = tables.shape[1];
  if (keys.shape[3] != D || tables.shape[0] != B || lengths.shape[0] != B || Hkv == 0 || Hq % Hkv != 0 || P == 0)
    return fail(env, op, "shapes do not fit: the pages' D must be q's, one block table and one length per row, Hq a multiple of Hkv" + shapes);
  const int32_t* table = tables.ptr<int32_t>();
  const int32_t* length = lengths.ptr<int32_t>();
  for (int64_t b = 0; b < B; ++b) {
    const std::string row = "row " + std::to_string(b);
    if (length[b] < 1 || length[b] > M * P)
      return fail(env, op, row + " attends to " + std::to_string(length[b]) + " tokens; its block table holds " + std::to_string(M) +
                               " pages of " + std::to_string(P) + " (1 to " + std::to_string(M * P) + " tokens)");
    for (int64_t j = 0; j < (length[b] + P - 1) / P; ++j) {
      const int32_t page = table[b * M + j];
      if (page < 0 || page >= N)
        return fail(env, op, row + ", block " + std::to_string(j) + ": page " + std::to_string(page) + " is outside the pool's " +
                                 std::to_string(N) + " pages");
    }
  }
  const week3::PagedAttentionArgs args{q.ptr<float>(), keys.ptr<float>(), values.ptr<float>(), table, length, B, Hq, Hkv, D, P, N, M,
                                       scale, out.ptr<float>()};
  return tl::run_kernel(env, op, [&] { week3::paged_attention(args); });
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports["connect"] = Napi::Function::New(env, tl::connect_addon);
  exports["pagedAttention"] = Napi::Function::New(env, PagedAttention);
  return exports;
}

}  // namespace

NODE_API_MODULE(week3_kernels, Init)
