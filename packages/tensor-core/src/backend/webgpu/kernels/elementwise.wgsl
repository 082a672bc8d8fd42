// Elementwise: out = f(x0, x1, x2) for every element of out, over any strides and broadcasts.
// Unary ops read x0, binary ops x0 and x1, `where` all three (x0 is the condition); the inputs an op does not
// read are bound to x0. Each invocation computes one element; its offsets in the four tensors come from one
// walk over their merged dims (layout.wgsl).
//
// Three modes, chosen per variant:
//   RAW      copies the bits of x0 (a same-dtype copy of any dtype: views made contiguous, concat, KV writes)
//   INTEGER  computes in i32 (int32, uint8 and bool tensors): exact, and saturating as the CPU backend's
//            float64 arithmetic is when it stores an out-of-range result
//   neither  computes in f32 (every op of a float result)
// Typed bindings (shader.ts): x0, x1, x2 and out.

override WG: u32 = 256u;
override NDIM: u32 = 1u;
override OP: u32 = 0u;
override RAW: bool = false;
override INTEGER: bool = false;

// The op codes (elementwise.ts reads them by name).
const OP_COPY = 0u;
const OP_NEG = 1u;
const OP_EXP = 2u;
const OP_LOG = 3u;
const OP_SQRT = 4u;
const OP_RSQRT = 5u;
const OP_SIGMOID = 6u;
const OP_SILU = 7u;
const OP_ABS = 8u;
const OP_TANH = 9u;
const OP_COS = 10u;
const OP_SIN = 11u;
const OP_ADD = 12u;
const OP_SUB = 13u;
const OP_MUL = 14u;
const OP_DIV = 15u;
const OP_MAXIMUM = 16u;
const OP_MINIMUM = 17u;
const OP_POW = 18u;
const OP_EQUAL = 19u;
const OP_LESS = 20u;
const OP_GREATER = 21u;
const OP_WHERE = 22u;

struct Params {
  n: u32,
  offsets: vec4<i32>,  // the first element of out, x0, x1, x2
  shape: array<vec4<u32>, 2>,
  strides: array<vec4<i32>, 6>,  // per dim: the strides of out, x0, x1, x2
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x0: array<u32>;
@group(0) @binding(2) var<storage, read> x1: array<u32>;
@group(0) @binding(3) var<storage, read> x2: array<u32>;
@group(0) @binding(4) var<storage, read_write> out: array<atomic<u32>>;

// exp only ever sees -|v|, so neither tail overflows to inf/inf.
fn sigmoid_f(v: f32) -> f32 {
  let z = exp(-abs(v));
  let s = 1.0 / (1.0 + z);
  return select(z * s, s, v >= 0.0);
}

// GPU sin/cos are only accurate near [-pi, pi]: reduce by 2pi first, in two parts so k * C1 stays exact.
fn reduce_angle(v: f32) -> f32 {
  let k = round(v * 0.15915494309189535);
  return (v - k * 6.28125) - k * 0.0019353071795864769;
}

// pow of a negative base is defined for integer exponents (WGSL's pow is not).
fn pow_f(a: f32, b: f32) -> f32 {
  if (b == 0.0) { return 1.0; }
  let r = pow(abs(a), b);
  if (a >= 0.0 || is_nan(a)) { return r; }
  if (fract(b) != 0.0) { return sqrt(a); }  // a < 0 here: sqrt gives the NaN we want
  return select(r, -r, fract(b * 0.5) != 0.0);
}

fn apply_float(v0: f32, v1: f32, v2: f32) -> f32 {
  switch (OP) {
    case OP_NEG: { return -v0; }
    case OP_EXP: { return exp(v0); }
    case OP_LOG: { return log(v0); }
    case OP_SQRT: { return sqrt(v0); }
    case OP_RSQRT: { return inverseSqrt(v0); }
    case OP_SIGMOID: { return sigmoid_f(v0); }
    case OP_SILU: { return v0 * sigmoid_f(v0); }
    case OP_ABS: { return abs(v0); }
    case OP_TANH: { return tanh(clamp(v0, -15.0, 15.0)); }  // tanh(15) is 1 in f32; some drivers overflow beyond
    case OP_COS: { return cos(reduce_angle(v0)); }
    case OP_SIN: { return sin(reduce_angle(v0)); }
    case OP_ADD: { return v0 + v1; }
    case OP_SUB: { return v0 - v1; }
    case OP_MUL: { return v0 * v1; }
    case OP_DIV: { return v0 / v1; }
    case OP_MAXIMUM: { return max(v0, v1); }
    case OP_MINIMUM: { return min(v0, v1); }
    case OP_POW: { return pow_f(v0, v1); }
    case OP_EQUAL: { return select(0.0, 1.0, v0 == v1); }
    case OP_LESS: { return select(0.0, 1.0, v0 < v1); }
    case OP_GREATER: { return select(0.0, 1.0, v0 > v1); }
    case OP_WHERE: { return select(v2, v1, v0 != 0.0); }
    default: { return v0; }  // copy: a conversion between dtypes
  }
}

// i32 arithmetic wraps; the CPU backend computes in float64 and saturates when it stores, so these do too.
const I32_MAX = 2147483647;
const I32_MIN = -2147483647 - 1;

fn add_sat(a: i32, b: i32) -> i32 {
  let s = a + b;
  if (a > 0 && b > 0 && s < 0) { return I32_MAX; }
  if (a < 0 && b < 0 && s >= 0) { return I32_MIN; }
  return s;
}

fn sub_sat(a: i32, b: i32) -> i32 {
  let s = a - b;
  if (a >= 0 && b < 0 && s < 0) { return I32_MAX; }
  if (a < 0 && b > 0 && s >= 0) { return I32_MIN; }
  return s;
}

fn mul_sat(a: i32, b: i32) -> i32 {
  let p = a * b;
  let overflow = (a != 0 && p / a != b) || (a == -1 && b == I32_MIN) || (b == -1 && a == I32_MIN);
  if (!overflow) { return p; }
  return select(I32_MIN, I32_MAX, (a < 0) == (b < 0));
}

fn apply_int(a: i32, b: i32, c: i32) -> i32 {
  switch (OP) {
    case OP_NEG: { return sub_sat(0, a); }
    case OP_ABS: { return select(a, sub_sat(0, a), a < 0); }
    case OP_ADD: { return add_sat(a, b); }
    case OP_SUB: { return sub_sat(a, b); }
    case OP_MUL: { return mul_sat(a, b); }
    case OP_MAXIMUM: { return max(a, b); }
    case OP_MINIMUM: { return min(a, b); }
    case OP_EQUAL: { return select(0, 1, a == b); }
    case OP_LESS: { return select(0, 1, a < b); }
    case OP_GREATER: { return select(0, 1, a > b); }
    case OP_WHERE: { return select(c, b, a != 0); }
    default: { return a; }  // copy: a conversion between integer dtypes (saturated by the store)
  }
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let i = flat_workgroup(wid, nwg) * WG + lid;
  if (i >= params.n) { return; }
  let e = vec4<u32>(params.offsets + walk(i, NDIM, params.shape, params.strides));
  if (RAW) {
    out_store_bits(e.x, x0_bits(e.y));
  } else if (INTEGER) {
    out_store_int(e.x, apply_int(x0_int(e.y), x1_int(e.z), x2_int(e.w)));
  } else {
    out_store(e.x, apply_float(x0_load(e.y), x1_load(e.z), x2_load(e.w)));
  }
}
