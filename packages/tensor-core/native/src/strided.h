// Walking N-dimensional strided views: the shared loop behind every elementwise, reduction and copy kernel.
//
// A kernel sees its operands as "rows": the last dimension is the inner loop (with its own stride per
// operand) and every other index combination is one row. Before walking, adjacent dimensions that are laid
// out back to back in every operand are merged, so a contiguous tensor of any rank becomes one long row and
// the inner loop is a plain stride-1 loop the compiler vectorises.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include "thread_pool.h"

namespace tl {

template <int K>
struct StridedLayout {
  std::vector<int64_t> shape;                    // after merging; at least one dimension
  std::array<std::vector<int64_t>, K> strides;  // per operand, in elements

  int64_t inner() const { return shape.back(); }
  int64_t inner_stride(int k) const { return strides[k].back(); }
  int64_t rows() const {
    int64_t r = 1;
    for (size_t i = 0; i + 1 < shape.size(); ++i) r *= shape[i];
    return r;
  }
  // Element offset of each operand at the start of row `row`.
  std::array<int64_t, K> row_offsets(int64_t row) const {
    std::array<int64_t, K> off{};
    for (int d = static_cast<int>(shape.size()) - 2; d >= 0; --d) {
      int64_t i = row % shape[d];
      row /= shape[d];
      for (int k = 0; k < K; ++k) off[k] += i * strides[k][d];
    }
    return off;
  }
};

// Builds the merged layout of K operands that share `shape` (each with its own strides).
template <int K>
StridedLayout<K> merge_layout(const std::vector<int64_t>& shape, const std::array<const std::vector<int64_t>*, K>& strides) {
  StridedLayout<K> layout;
  for (size_t d = 0; d < shape.size(); ++d) {
    if (shape[d] == 1) continue;  // size-1 dims carry no information
    bool mergeable = !layout.shape.empty();
    for (int k = 0; k < K && mergeable; ++k)
      mergeable = layout.strides[k].back() == (*strides[k])[d] * shape[d];
    if (mergeable) {
      layout.shape.back() *= shape[d];
      for (int k = 0; k < K; ++k) layout.strides[k].back() = (*strides[k])[d];
    } else {
      layout.shape.push_back(shape[d]);
      for (int k = 0; k < K; ++k) layout.strides[k].push_back((*strides[k])[d]);
    }
  }
  if (layout.shape.empty()) {
    layout.shape.push_back(1);
    for (int k = 0; k < K; ++k) layout.strides[k].push_back(1);
  }
  return layout;
}

// Calls body(offsets, count, inner_strides) over the whole layout on the pool. Long rows are split into
// chunks so that a single contiguous tensor still uses every thread.
template <int K, typename Body>
void for_each_span(const StridedLayout<K>& layout, const Body& body) {
  constexpr int64_t kChunk = 1 << 14;
  const int64_t inner = layout.inner();
  const int64_t chunks_per_row = (inner + kChunk - 1) / kChunk;
  const int64_t items = layout.rows() * chunks_per_row;
  std::array<int64_t, K> step;
  for (int k = 0; k < K; ++k) step[k] = layout.inner_stride(k);
  const int64_t grain = std::max<int64_t>(1, kChunk / std::max<int64_t>(inner, 1));
  parallel_for(items, grain, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      int64_t row = item / chunks_per_row, chunk = item % chunks_per_row;
      std::array<int64_t, K> off = layout.row_offsets(row);
      int64_t start = chunk * kChunk;
      for (int k = 0; k < K; ++k) off[k] += start * step[k];
      body(off, std::min(kChunk, inner - start), step);
    }
  });
}

// The rows of x's last axis, for reductions: body(row_index_in_out, x_offset) for each of x's outer indices.
inline std::vector<int64_t> outer_shape(const std::vector<int64_t>& shape) {
  return std::vector<int64_t>(shape.begin(), shape.end() - 1);
}

}  // namespace tl

namespace tl {

// Runs body(row, x_offset) for every index of x's leading dimensions (x's last axis is the row), on the
// pool. `row` counts rows in row-major order, so a contiguous output row is at row * (its row length).
template <typename Body>
void for_each_last_axis_row(const TensorRef& x, int64_t grain, const Body& body) {
  const int nd = x.ndim();
  int64_t rows = 1;
  for (int d = 0; d + 1 < nd; ++d) rows *= x.shape[d];
  parallel_for(rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      int64_t off = 0, rest = row;
      for (int d = nd - 2; d >= 0; --d) {
        off += (rest % x.shape[d]) * x.strides[d];
        rest /= x.shape[d];
      }
      body(row, off);
    }
  });
}

// How many rows of length n make a worthwhile chunk of parallel work.
inline int64_t rows_grain(int64_t n) { return std::max<int64_t>(1, 8192 / std::max<int64_t>(n, 1)); }

}  // namespace tl
