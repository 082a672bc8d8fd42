// Kernels over the rows of a view (its last axis), one workgroup per row. Rows (layout.wgsl) are the leading
// dims of x, any strides; the last axis has any stride too. out holds words, contiguous.
//
// Reductions (sum, max, min, argmax, logsumexp) write one word per row: f32 bits, or i32 bits for argmax
// and integer sums. Each invocation folds the elements lid, lid + WG, ... into an accumulator, then a tree
// in workgroup memory folds the WG accumulators. Two ops add a pass that writes the row [rows, n]:
//   softmax   logsumexp's fold, then exp(x - max) / sum
//   rmsNorm   the sum of squares, then x / sqrt(mean(x^2) + eps) * weight
// Prefix sums (cumsum) walk the row in tiles of WG elements instead: a scan of the tile in workgroup memory
// (Hillis-Steele: log2(WG) steps, each adding the value `offset` places back) plus the running total of the
// tiles before.
// Sums are f32, or i32 words (two's complement, wrapping past 2^31) for integer tensors.
// Typed bindings (shader.ts): x, weight.

override WG: u32 = 256u;  // a power of two
override NDIM: u32 = 0u;
override OP: u32 = 0u;

const OP_SUM = 0u;
const OP_SUM_INT = 1u;  // int32, uint8 and bool
const OP_MAX = 2u;
const OP_MIN = 3u;
const OP_ARGMAX = 4u;
const OP_LOGSUMEXP = 5u;
const OP_SOFTMAX = 6u;
const OP_RMS_NORM = 7u;
const OP_CUMSUM = 8u;
const OP_CUMSUM_INT = 9u;

struct Params {
  rows: Rows,
  weight_offset: i32,  // rmsNorm's weight
  weight_stride: i32,
  eps: f32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<u32>;
@group(0) @binding(2) var<storage, read> weight: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<u32>;

// v: the value so far (the running max for logsumexp and softmax); s: the sum of exp(x - v) (logsumexp,
// softmax); i: argmax's index, an integer sum, or a prefix sum's word.
struct Acc {
  v: f32,
  s: f32,
  i: u32,
}

var<workgroup> scratch: array<Acc, WG>;

fn identity() -> Acc {
  switch (OP) {
    case OP_MAX, OP_LOGSUMEXP, OP_SOFTMAX: { return Acc(-inf(), 0.0, 0u); }
    case OP_MIN: { return Acc(inf(), 0.0, 0u); }
    case OP_ARGMAX: { return Acc(-inf(), 0.0, 0xffffffffu); }
    default: { return Acc(0.0, 0.0, 0u); }
  }
}

fn element(e: u32, index: u32) -> Acc {
  if (OP == OP_SUM_INT) { return Acc(0.0, 0.0, bitcast<u32>(x_int(e))); }
  let v = x_load(e);
  if (OP == OP_RMS_NORM) { return Acc(v * v, 0.0, 0u); }
  return Acc(v, 1.0, index);
}

// NaN wins max, min and argmax (the first NaN), as in numpy; argmax's ties go to the first index.
fn combine(a: Acc, b: Acc) -> Acc {
  switch (OP) {
    case OP_SUM, OP_RMS_NORM: { return Acc(a.v + b.v, 0.0, 0u); }
    case OP_SUM_INT: { return Acc(0.0, 0.0, a.i + b.i); }
    case OP_MAX: {
      if (is_nan(a.v)) { return a; }
      if (is_nan(b.v)) { return b; }
      return Acc(max(a.v, b.v), 0.0, 0u);
    }
    case OP_MIN: {
      if (is_nan(a.v)) { return a; }
      if (is_nan(b.v)) { return b; }
      return Acc(min(a.v, b.v), 0.0, 0u);
    }
    case OP_ARGMAX: {
      let an = is_nan(a.v);
      let bn = is_nan(b.v);
      var take_b: bool;
      if (an != bn) {
        take_b = bn;
      } else if (an || a.v == b.v) {
        take_b = b.i < a.i;
      } else {
        take_b = b.v > a.v;
      }
      if (take_b) { return b; }
      return a;
    }
    default: {  // logsumexp and softmax: rescale both sums to the larger max
      let m = max(a.v, b.v);
      if (m == -inf()) { return Acc(m, 0.0, 0u); }
      return Acc(m, a.s * exp(a.v - m) + b.s * exp(b.v - m), 0u);
    }
  }
}

fn result_bits(r: Acc) -> u32 {
  switch (OP) {
    case OP_SUM_INT, OP_ARGMAX: { return r.i; }
    case OP_LOGSUMEXP: { return bitcast<u32>(select(r.v + log(r.s), r.v, is_inf(r.v))); }
    default: { return bitcast<u32>(r.v); }
  }
}

// The inclusive prefix sums of the row, written to out[row * n ..].
fn prefix_sums(row: u32, base: i32, lid: u32) {
  let n = params.rows.n;
  let integer = OP == OP_CUMSUM_INT;
  var carry = 0u;  // 0 is also the bits of 0.0
  for (var tile = 0u; tile < n; tile += WG) {
    let i = tile + lid;
    var bits = 0u;
    if (i < n) {
      let e = u32(base + i32(i) * params.rows.stride);
      bits = select(bitcast<u32>(x_load(e)), bitcast<u32>(x_int(e)), integer);
    }
    scratch[lid].i = bits;
    workgroupBarrier();
    for (var offset = 1u; offset < WG; offset *= 2u) {
      // A branch rather than select(), which would also read scratch[lid - offset] where it wraps around.
      var back = 0u;
      if (lid >= offset) { back = scratch[lid - offset].i; }
      workgroupBarrier();
      scratch[lid].i = add_words(scratch[lid].i, back, integer);
      workgroupBarrier();
    }
    if (i < n) { out[row * n + i] = add_words(carry, scratch[lid].i, integer); }
    carry = add_words(carry, scratch[WG - 1u].i, integer);
    workgroupBarrier();  // the next tile overwrites scratch
  }
}

fn add_words(a: u32, b: u32, integer: bool) -> u32 {
  if (integer) { return bitcast<u32>(bitcast<i32>(a) + bitcast<i32>(b)); }
  return bitcast<u32>(bitcast<f32>(a) + bitcast<f32>(b));
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let row = flat_workgroup(wid, nwg);
  if (row >= params.rows.count) { return; }  // uniform per workgroup: the barriers below stay uniform
  let n = params.rows.n;
  let stride = params.rows.stride;
  let base = row_start(params.rows, NDIM, row);
  if (OP == OP_CUMSUM || OP == OP_CUMSUM_INT) {
    prefix_sums(row, base, lid);
    return;
  }
  var acc = identity();
  for (var i = lid; i < n; i += WG) { acc = combine(acc, element(u32(base + i32(i) * stride), i)); }
  scratch[lid] = acc;
  workgroupBarrier();
  for (var step = WG / 2u; step > 0u; step /= 2u) {
    if (lid < step) { scratch[lid] = combine(scratch[lid], scratch[lid + step]); }
    workgroupBarrier();
  }
  let r = scratch[0];
  if (OP == OP_SOFTMAX) {
    // A row that is all -inf (fully masked) has no softmax; it becomes zeros, as on the CPU.
    for (var i = lid; i < n; i += WG) {
      let v = x_load(u32(base + i32(i) * stride));
      out[row * n + i] = bitcast<u32>(select(exp(v - r.v) / r.s, 0.0, r.v == -inf()));
    }
  } else if (OP == OP_RMS_NORM) {
    let scale = inverseSqrt(r.v / f32(n) + params.eps);
    for (var i = lid; i < n; i += WG) {
      let w = weight_load(u32(params.weight_offset + i32(i) * params.weight_stride));
      out[row * n + i] = bitcast<u32>(x_load(u32(base + i32(i) * stride)) * scale * w);
    }
  } else if (lid == 0u) {
    out[row] = result_bits(r);
  }
}
