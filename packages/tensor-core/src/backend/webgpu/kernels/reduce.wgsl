// Reductions over the last axis: sum, max, min, argmax, logsumexp, and softmax, which is logsumexp's pass
// plus one that writes exp(x - max) / sum. One workgroup per row: each invocation folds the elements lid,
// lid + WG, ... into an accumulator, then a tree in workgroup memory folds the WG accumulators.
// Rows are the leading dims of x (any strides, walked as in layout.wgsl); x's last axis has any stride.
// out holds words: f32 bits, or i32 bits for argmax and integer sums; softmax writes [rows, n].
// Typed binding (shader.ts): x.

override WG: u32 = 256u;  // a power of two
override NDIM: u32 = 0u;
override OP: u32 = 0u;

const OP_SUM = 0u;
const OP_SUM_INT = 1u;  // int32, uint8 and bool: adds two's-complement words (wraps past 2^31)
const OP_MAX = 2u;
const OP_MIN = 3u;
const OP_ARGMAX = 4u;
const OP_LOGSUMEXP = 5u;
const OP_SOFTMAX = 6u;

struct Params {
  rows: u32,
  n: u32,
  x_offset: i32,
  x_stride: i32,  // along the reduced axis
  shape: array<vec4<u32>, 2>,  // the leading dims
  strides: array<vec4<i32>, 6>,  // x's strides along them (component 0)
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<u32>;
@group(0) @binding(2) var<storage, read_write> out: array<u32>;

// v: the value so far (the running max for logsumexp and softmax); s: the sum of exp(x - v) (logsumexp,
// softmax); i: argmax's index, or OP_SUM_INT's sum.
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
  return Acc(x_load(e), 1.0, index);
}

// NaN wins max, min and argmax (the first NaN), as in numpy; argmax's ties go to the first index.
fn combine(a: Acc, b: Acc) -> Acc {
  switch (OP) {
    case OP_SUM: { return Acc(a.v + b.v, 0.0, 0u); }
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

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let row = flat_workgroup(wid, nwg);
  if (row >= params.rows) { return; }  // uniform per workgroup: the barriers below stay uniform
  let n = params.n;
  let base = params.x_offset + walk(row, NDIM, params.shape, params.strides).x;
  var acc = identity();
  for (var i = lid; i < n; i += WG) { acc = combine(acc, element(u32(base + i32(i) * params.x_stride), i)); }
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
      let v = x_load(u32(base + i32(i) * params.x_stride));
      out[row * n + i] = bitcast<u32>(select(exp(v - r.v) / r.s, 0.0, r.v == -inf()));
    }
  } else if (lid == 0u) {
    out[row] = result_bits(r);
  }
}
