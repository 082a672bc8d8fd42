// GEMV: out [batch, M, N] (f32) = a [batch, M, K] @ b [batch, K, N] for M <= MAX_ROWS, the shape of a
// one-token decode step. There, every weight is used by only M rows, so the kernel is bound by reading b:
// it must stream b once, in wide coalesced reads. (Same params and bindings as matmul.wgsl.)
//
// The plain algorithm is one invocation per output column n, a loop over K for the M rows at once. The steps:
// 1. A group of TPC invocations per column splits K, so that the column's weights are read by neighbouring
//    invocations at neighbouring addresses (b is W.T for a linear layer: column n of b is row n of W, with
//    stride 1 along K), then their partial sums are added in workgroup memory.
// 2. Chunks of CHUNK values per read, by B_FORMAT:
//    FORMAT_ELEMENTS  any dtype and strides, one element at a time (CHUNK 1)
//    FORMAT_HALF_WORDS  bf16/f16 rows with stride 1 that start on a word: one u32 word is two values, unpacked
//                     with a shift (bf16 is the top half of an f32: bitcast<f32>(w << 16))
//    FORMAT_QUANTIZED   an MLX-quantized weight (the layout is in matmul.wgsl): 32 values at a time, which
//                     are BITS whole words and lie inside one group
// Workgroup x (spilling into y) computes columns x * COLS .. x * COLS + COLS - 1 of batch z.

override WG: u32 = 256u;
override TPC: u32 = 32u;  // invocations per column
override ROWS: u32 = 1u;  // M rounded up to a power of two (fewer variants)
override NBATCH: u32 = 0u;
override B_FORMAT: u32 = 0u;
override B_BF16: bool = true;  // FORMAT_HALF_WORDS: bf16 (else f16)
override BITS: u32 = 4u;
override GROUP_SIZE: u32 = 64u;
override COLS: u32 = WG / TPC;

const FORMAT_ELEMENTS = 0u;
const FORMAT_HALF_WORDS = 1u;
const FORMAT_QUANTIZED = 2u;
const MAX_ROWS = 8u;

struct Params {
  m: u32,
  n: u32,
  k: u32,
  offsets: vec4<i32>,  // the first element of a, b, out; quantized: of the scales
  a_strides: vec2<i32>,
  b_strides: vec2<i32>,
  out_strides: vec2<i32>,
  batch_shape: array<vec4<u32>, 2>,
  batch_strides: array<vec4<i32>, 6>,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> a: array<u32>;
@group(0) @binding(2) var<storage, read> b: array<u32>;
@group(0) @binding(3) var<storage, read> scales: array<u32>;
@group(0) @binding(4) var<storage, read> biases: array<u32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

var<workgroup> partial: array<f32, WG * MAX_ROWS>;

// Every loop over the rows runs to the constant ROWS, so that it unrolls and acc stays in registers (an
// array indexed by a run-time value lives in slow local memory); rows past M are skipped by the test.
var<private> acc: array<f32, MAX_ROWS>;

// Values of b per read, by format.
fn chunk_size() -> u32 {
  switch (B_FORMAT) {
    case FORMAT_HALF_WORDS: { return 2u; }
    case FORMAT_QUANTIZED: { return 32u; }
    default: { return 1u; }
  }
}

// acc[m] += a[m, k] * v for the M rows.
fn accumulate(a_base: i32, k: u32, v: f32) {
  for (var m = 0u; m < ROWS; m++) {
    if (m < params.m) {
      acc[m] = fma(a_load(u32(a_base + i32(m) * params.a_strides.x + i32(k) * params.a_strides.y)), v, acc[m]);
    }
  }
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
  let N = params.n;
  let K = params.k;
  let base = params.offsets + walk(wid.z, NBATCH, params.batch_shape, params.batch_strides);
  let t = li % TPC;
  let col = flat_workgroup(wid, nwg) * COLS + li / TPC;
  let live = col < N;  // invocations past N still take part in the barriers below
  let chunks = select(0u, K / chunk_size(), live);

  for (var c = t; c < chunks; c += TPC) {
    if (B_FORMAT == FORMAT_HALF_WORDS) {
      let w = b[u32(base.y + i32(col) * params.b_strides.y) / 2u + c];
      if (B_BF16) {
        accumulate(base.x, 2u * c, bitcast<f32>(w << 16u));
        accumulate(base.x, 2u * c + 1u, bitcast<f32>(w & 0xffff0000u));
      } else {
        accumulate(base.x, 2u * c, f16_to_f32(w & 0xffffu));
        accumulate(base.x, 2u * c + 1u, f16_to_f32(w >> 16u));
      }
    } else if (B_FORMAT == FORMAT_QUANTIZED) {
      // BITS words hold the chunk's 32 values; the chunk lies inside one group (GROUP_SIZE >= 32).
      let w0 = u32(base.y) + col * (K * BITS / 32u) + c * BITS;
      var words: array<u32, 8>;
      for (var i = 0u; i < BITS; i++) { words[i] = b[w0 + i]; }
      let g = u32(params.offsets.w) + col * (K / GROUP_SIZE) + (c * 32u) / GROUP_SIZE;
      let scale = scales_load(g);
      let bias = biases_load(g);
      for (var j = 0u; j < 32u; j++) {
        let bit = j * BITS;
        let shift = bit & 31u;
        var q = words[bit >> 5u] >> shift;
        if (shift + BITS > 32u) { q |= words[(bit >> 5u) + 1u] << (32u - shift); }
        accumulate(base.x, 32u * c + j, f32(q & ((1u << BITS) - 1u)) * scale + bias);
      }
    } else {
      accumulate(base.x, c, b_load(u32(base.y + i32(c) * params.b_strides.x + i32(col) * params.b_strides.y)));
    }
  }

  // Add the TPC partial sums of each column: a tree over the group, all rows at once.
  for (var m = 0u; m < ROWS; m++) { partial[m * WG + li] = acc[m]; }
  workgroupBarrier();
  for (var step = TPC / 2u; step > 0u; step /= 2u) {
    if (t < step) {
      for (var m = 0u; m < ROWS; m++) { partial[m * WG + li] += partial[m * WG + li + step]; }
    }
    workgroupBarrier();
  }
  if (live && t == 0u) {
    for (var m = 0u; m < ROWS; m++) {
      if (m < params.m) {
        out[u32(base.z + i32(m) * params.out_strides.x + i32(col) * params.out_strides.y)] = partial[m * WG + li];
      }
    }
  }
}
