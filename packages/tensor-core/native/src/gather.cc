// take: gathers rows of a table (embedding lookup). out[i, ...] = table[indices[i], ...].
#include <cstring>

#include "binding_util.h"
#include "strided.h"

namespace tl {
namespace {

int64_t index_at(const TensorRef& indices, int64_t i) {
  return indices.dtype == DType::U32 ? static_cast<int64_t>(indices.ptr<uint32_t>()[i]) : indices.ptr<int32_t>()[i];
}

// take(table, indices, out): table [R, ...rest] (any strides), indices int32/uint32 contiguous,
// out contiguous [...indices.shape, ...rest] of the table's dtype.
Napi::Value TakeBinding(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  TL_TENSOR_ARG(table, 0, "take");
  TL_TENSOR_ARG(indices, 1, "take");
  TL_TENSOR_ARG(out, 2, "take");
  if (indices.dtype != DType::I32 && indices.dtype != DType::U32)
    return throw_type_error(env, std::string("take: indices must be int32 or uint32, got ") + indices.describe());
  if (table.ndim() == 0 || !indices.contiguous() || !out.contiguous() || out.dtype != table.dtype ||
      out.numel() != indices.numel() * (table.shape[0] ? table.numel() / table.shape[0] : 0))
    return throw_range_error(env, "take: output " + out.describe() + " does not fit table " + table.describe() +
                                      " and indices " + indices.describe());
  const int64_t rows = table.shape[0], count = indices.numel();
  for (int64_t i = 0; i < count; ++i) {
    int64_t r = index_at(indices, i);
    if (r < 0 || r >= rows)
      return throw_range_error(env, "take: index " + std::to_string(r) + " at position " + std::to_string(i) +
                                        " is out of range for a table of " + std::to_string(rows) + " rows " +
                                        table.describe());
  }
  // One table row as a view of its own, to copy with the strided walker.
  std::vector<int64_t> row_shape(table.shape.begin() + 1, table.shape.end());
  std::vector<int64_t> row_strides(table.strides.begin() + 1, table.strides.end());
  std::vector<int64_t> out_strides(row_shape.size());
  int64_t row_size = 1;
  for (int d = static_cast<int>(row_shape.size()) - 1; d >= 0; --d) {
    out_strides[d] = row_size;
    row_size *= row_shape[d];
  }
  auto layout = merge_layout<2>(row_shape, {&row_strides, &out_strides});
  const int64_t es = dtype_size(table.dtype);
  const bool flat_rows = layout.shape.size() == 1 && layout.inner_stride(0) == 1;
  parallel_for(count, std::max<int64_t>(1, 4096 / std::max<int64_t>(row_size, 1)), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const auto* src = static_cast<const uint8_t*>(table.data) + index_at(indices, i) * table.strides[0] * es;
      auto* dst = static_cast<uint8_t*>(out.data) + i * row_size * es;
      if (flat_rows) {
        std::memcpy(dst, src, row_size * es);
        continue;
      }
      for (int64_t j = 0; j < row_size; ++j) {
        auto off = layout.row_offsets(j / layout.inner());
        int64_t k = j % layout.inner();
        std::memcpy(dst + j * es, src + (off[0] + k * layout.inner_stride(0)) * es, es);
      }
    }
  });
  return env.Undefined();
}
TL_EXPORT("take", TakeBinding);

}  // namespace
}  // namespace tl
