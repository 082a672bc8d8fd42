// Tiled matmul: out [batch, M, N] (f32) = a [batch, M, K] @ b [batch, K, N], any strides (transposed
// operands are read in place), a and b in any float dtype; with B_QUANTIZED, b is an MLX-quantized weight
// W [N, K] read as its transpose, and there is no batch for it.
//
// MLX's layout: row n of W is a little-endian stream of BITS-bit values in the words of `b`, value k in
// stream bits [k*BITS, (k+1)*BITS), stream bit i in bit i % 32 of word i / 32 (with 3, 5 and 6 bits a value
// may straddle two words); a row holds K * BITS / 32 words. Each GROUP_SIZE values share a scale and a bias
// (`scales`, `biases` [N, K / GROUP_SIZE]); the dequantized value is q * scale + bias.
//
// The plain algorithm is one invocation per output, a loop over K. Two steps make it fast:
// 1. Tiles in workgroup memory: a workgroup computes a BM x BN block of out and walks K in slices of BK,
//    staging the BM x BK slice of a and the BK x BN slice of b once, so each loaded value is used BN (or BM)
//    times instead of once.
// 2. A TM x TN block of outputs per invocation: each value read from workgroup memory is reused TM or TN
//    times from registers.
// Workgroup (x, y, z) computes the tile at column block x, row block y of batch z.
// Typed bindings (shader.ts): a, b (dense), scales, biases (quantized).

override WX: u32 = 16u;  // invocations per workgroup along N
override WY: u32 = 16u;  // ... and along M
override BK: u32 = 16u;
override NBATCH: u32 = 0u;  // batch dims walked
override B_QUANTIZED: bool = false;
override BITS: u32 = 4u;
override GROUP_SIZE: u32 = 64u;

const TM = 4u;
const TN = 4u;
override BM: u32 = WY * TM;
override BN: u32 = WX * TN;

struct Params {
  m: u32,
  n: u32,
  k: u32,
  offsets: vec4<i32>,  // the first element of a, b, out; quantized: of the scales
  a_strides: vec2<i32>,  // along M and K
  b_strides: vec2<i32>,  // along K and N
  out_strides: vec2<i32>,  // along M and N
  batch_shape: array<vec4<u32>, 2>,
  batch_strides: array<vec4<i32>, 6>,  // per batch dim: the strides of a, b, out
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> a: array<u32>;
@group(0) @binding(2) var<storage, read> b: array<u32>;
@group(0) @binding(3) var<storage, read> scales: array<u32>;
@group(0) @binding(4) var<storage, read> biases: array<u32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

// The K slices of the a and b tiles, k-major, so the inner loop reads a row of each.
var<workgroup> tile_a: array<f32, BM * BK>;
var<workgroup> tile_b: array<f32, BN * BK>;

// Value k of row n of the quantized W whose words start at `words0`.
fn dequantize(words0: u32, n: u32, k: u32) -> f32 {
  let K = params.k;
  let bit = k * BITS;
  let w = words0 + n * (K * BITS / 32u) + (bit >> 5u);
  let shift = bit & 31u;
  var q = b[w] >> shift;
  if (shift + BITS > 32u) { q |= b[w + 1u] << (32u - shift); }
  q &= (1u << BITS) - 1u;
  let g = u32(params.offsets.w) + n * (K / GROUP_SIZE) + k / GROUP_SIZE;
  return f32(q) * scales_load(g) + biases_load(g);
}

fn b_at(base: i32, k: u32, n: u32) -> f32 {
  if (B_QUANTIZED) { return dequantize(u32(base), n, k); }
  return b_load(u32(base + i32(k) * params.b_strides.x + i32(n) * params.b_strides.y));
}

@compute @workgroup_size(WX, WY)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
  let M = params.m;
  let N = params.n;
  let K = params.k;
  let base = params.offsets + walk(wid.z, NBATCH, params.batch_shape, params.batch_strides);
  let row0 = wid.y * BM;
  let col0 = wid.x * BN;

  var acc: array<array<f32, TN>, TM>;
  for (var k0 = 0u; k0 < K; k0 += BK) {
    // Stage the tiles. Out-of-range elements are zeros, so edge tiles need no case of their own below.
    // Consecutive invocations take consecutive k of a and n of b: coalesced for row-major operands.
    for (var i = li; i < BM * BK; i += WX * WY) {
      let r = i / BK;
      let kk = i % BK;
      var v = 0.0;
      if (row0 + r < M && k0 + kk < K) {
        v = a_load(u32(base.x + i32(row0 + r) * params.a_strides.x + i32(k0 + kk) * params.a_strides.y));
      }
      tile_a[kk * BM + r] = v;
    }
    for (var i = li; i < BN * BK; i += WX * WY) {
      let c = i % BN;
      let kk = i / BN;
      var v = 0.0;
      if (col0 + c < N && k0 + kk < K) { v = b_at(base.y, k0 + kk, col0 + c); }
      tile_b[kk * BN + c] = v;
    }
    workgroupBarrier();
    // Invocation (x, y) owns rows y, y + WY, ... and columns x, x + WX, ...: neighbouring invocations read
    // neighbouring words of workgroup memory, and write neighbouring outputs.
    for (var kk = 0u; kk < BK; kk++) {
      var av: array<f32, TM>;
      var bv: array<f32, TN>;
      for (var r = 0u; r < TM; r++) { av[r] = tile_a[kk * BM + lid.y + r * WY]; }
      for (var c = 0u; c < TN; c++) { bv[c] = tile_b[kk * BN + lid.x + c * WX]; }
      for (var r = 0u; r < TM; r++) {
        for (var c = 0u; c < TN; c++) { acc[r][c] = fma(av[r], bv[c], acc[r][c]); }
      }
    }
    workgroupBarrier();
  }

  for (var r = 0u; r < TM; r++) {
    let row = row0 + lid.y + r * WY;
    for (var c = 0u; c < TN; c++) {
      let col = col0 + lid.x + c * WX;
      if (row < M && col < N) {
        out[u32(base.z + i32(row) * params.out_strides.x + i32(col) * params.out_strides.y)] = acc[r][c];
      }
    }
  }
}
