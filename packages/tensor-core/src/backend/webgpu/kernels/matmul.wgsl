// Matrix products: out [batch, M, N] (f32) = a [batch, M, K] @ b [batch, K, N], any strides (transposed
// operands are read in place), a and b in any float dtype. With B_FORMAT = FORMAT_QUANTIZED, b is an
// MLX-quantized weight W [N, K] read as its transpose, and there is no batch for it:
//   row n of W is a little-endian stream of BITS-bit values in the words of `b`, value k in stream bits
//   [k*BITS, (k+1)*BITS), stream bit i in bit i % 32 of word i / 32 (with 3, 5 and 6 bits a value may
//   straddle two words); a row holds K * BITS / 32 words. Each GROUP_SIZE values share a scale and a bias
//   (`scales`, `biases` [N, K / GROUP_SIZE]); the dequantized value is q * scale + bias.
// Two entry points share these params and bindings (typed bindings, shader.ts: a, b, scales, biases):
//   main  the tiled kernel, for any M
//   gemv  for M <= MAX_ROWS, the shape of a one-token decode step, where each weight is used by only M rows
//         and the kernel is bound by reading b: it must stream b once, in wide coalesced reads
// The plain algorithm of both is one invocation per output, a loop over K. Their optimisations follow.

override NBATCH: u32 = 0u;  // batch dims walked
override B_FORMAT: u32 = 0u;
override B_BF16: bool = true;  // FORMAT_HALF_WORDS: bf16 (else f16)
override BITS: u32 = 4u;
override GROUP_SIZE: u32 = 64u;

// How b is read (the tiled kernel distinguishes only FORMAT_QUANTIZED):
//   FORMAT_ELEMENTS    any dtype and strides, one element at a time
//   FORMAT_HALF_WORDS  bf16/f16 rows with stride 1 that start on a word: one u32 word is two values
//   FORMAT_QUANTIZED   an MLX-quantized weight
const FORMAT_ELEMENTS = 0u;
const FORMAT_HALF_WORDS = 1u;
const FORMAT_QUANTIZED = 2u;

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

// ---------------------------------------------------------------------------------------------------------
// main: the tiled kernel. Two steps make it fast:
// 1. Tiles in workgroup memory: a workgroup computes a BM x BN block of out and walks K in slices of BK,
//    staging the BM x BK slice of a and the BK x BN slice of b once, so each loaded value is used BN (or BM)
//    times instead of once.
// 2. A TM x TN block of outputs per invocation: each value read from workgroup memory is reused TM or TN
//    times from registers.
// Workgroup (x, y, z) computes the tile at column block x, row block y of batch z.

override WX: u32 = 16u;  // invocations per workgroup along N
override WY: u32 = 16u;  // ... and along M
override BK: u32 = 16u;
const TM = 4u;
const TN = 4u;
override BM: u32 = WY * TM;
override BN: u32 = WX * TN;

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
  if (B_FORMAT == FORMAT_QUANTIZED) { return dequantize(u32(base), n, k); }
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

// ---------------------------------------------------------------------------------------------------------
// gemv: M <= MAX_ROWS. Two steps:
// 1. A group of TPC invocations per output column splits K, so that the column's weights are read by
//    neighbouring invocations at neighbouring addresses (b is W.T for a linear layer: column n of b is row n
//    of W, with stride 1 along K), then their partial sums are added in workgroup memory.
// 2. Chunks of b per read, by B_FORMAT: one element; one word of two bf16/f16 values, unpacked with a shift
//    (bf16 is the top half of an f32: bitcast<f32>(w << 16)); or 32 quantized values, which are BITS whole
//    words and lie inside one group.
// Workgroup x (spilling into y) computes columns x * COLS .. x * COLS + COLS - 1 of batch z.

override WG: u32 = 256u;
override TPC: u32 = 32u;  // invocations per column
override ROWS: u32 = 1u;  // M rounded up to a power of two (fewer variants)
override COLS: u32 = WG / TPC;
const MAX_ROWS = 8u;

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
fn gemv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
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
