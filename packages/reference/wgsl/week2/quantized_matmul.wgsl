// Chapter 2.3: quantized matmul on the GPU. out [M, N] = x [M, K] @ W.T for an MLX-quantized W [N, K]: packed
// words w [N, K * bits / 32], scales and biases [N, K / group_size], value q of W standing for
// q * scale + bias (chapter 2.2 explains the layout).
//
// A workgroup computes one output column n (it reads weight row n) for four rows of x at a time, the four lanes
// of a vec4: each value it unpacks serves all of them. Its WG invocations share the row out in chunks of 32 values. A chunk of 32
// values is `bits` whole words (32 * bits bits), so every chunk starts on a word, whatever the bit width, and
// it lies inside one group (groups are 32, 64 or 128 values), so it has one scale and one bias. Invocation t
// takes chunks t, t + WG, t + 2 WG, ...: neighbouring invocations read neighbouring words, which the GPU
// merges into few wide memory transactions. Per chunk, with the group's scale s and bias b,
//   sum_j x_j (q_j s + b) = s * sum_j q_j x_j + b * sum_j x_j,
// so the scale and bias cost once per chunk. Last, the invocations' partial sums are added in workgroup
// memory by a tree: WG / 2 invocations add pairs, then WG / 4, ..., in log2(WG) steps.

override WG: u32 = 64u;  // invocations per workgroup, a power of two (the tree)
const ROWS = 4u;  // rows of x per workgroup: the lanes of a vec4

struct Params {
  m: u32,
  n: u32,
  k: u32,
  bits: u32,
  group_size: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<u32>;  // [M, K] in float32, bf16 or f16: x_load(i)
@group(0) @binding(2) var<storage, read> w: array<u32>;  // [N, K * bits / 32]
@group(0) @binding(3) var<storage, read> scales: array<u32>;  // [N, K / group_size]: scales_load(i)
@group(0) @binding(4) var<storage, read> biases: array<u32>;  // biases_load(i)
@group(0) @binding(5) var<storage, read_write> out: array<f32>;  // [M, N]

var<workgroup> partial: array<vec4<f32>, WG>;

/** Column `col` of rows m0 .. m0 + 3 of x (0 for a row past M). */
fn x_rows(m0: u32, col: u32) -> vec4<f32> {
  var v = vec4<f32>(0.0);
  for (var r = 0u; r < ROWS; r++) {
    if (m0 + r < params.m) { v[r] = x_load((m0 + r) * params.k + col); }
  }
  return v;
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  // Workgroup (x, y) is column y * (workgroups along x) + x: N may exceed the 65535 workgroups of one dimension.
  let n = wid.y * nwg.x + wid.x;
  // The whole workgroup leaves together (n is the same for all its invocations), so no barrier is left waiting.
  if (n >= params.n) { return; }
  let m0 = wid.z * ROWS;
  let K = params.k;
  let bits = params.bits;
  let mask = (1u << bits) - 1u;

  var acc = vec4<f32>(0.0);
  for (var c = lid; c < K / 32u; c += WG) {
    let g = n * (K / params.group_size) + c * 32u / params.group_size;
    let words = n * (K * bits / 32u) + c * bits;
    var qx = vec4<f32>(0.0);
    var sx = vec4<f32>(0.0);
    for (var j = 0u; j < 32u; j++) {
      let bit = j * bits;
      let shift = bit & 31u;
      var q = w[words + (bit >> 5u)] >> shift;
      // 3-, 5- and 6-bit values may continue in the next word.
      if (shift + bits > 32u) { q |= w[words + (bit >> 5u) + 1u] << (32u - shift); }
      let xv = x_rows(m0, c * 32u + j);
      qx = fma(vec4<f32>(f32(q & mask)), xv, qx);
      sx += xv;
    }
    acc += scales_load(g) * qx + biases_load(g) * sx;
  }

  // The tree: after the step that adds h apart, partial[i] (i < h) holds the sum of WG / h partial sums.
  partial[lid] = acc;
  workgroupBarrier();
  for (var h = WG / 2u; h > 0u; h >>= 1u) {
    if (lid < h) { partial[lid] += partial[lid + h]; }
    workgroupBarrier();
  }
  if (lid == 0u) {
    let sums = partial[0];
    for (var r = 0u; r < ROWS; r++) {
      if (m0 + r < params.m) { out[(m0 + r) * params.n + n] = sums[r]; }
    }
  }
}
