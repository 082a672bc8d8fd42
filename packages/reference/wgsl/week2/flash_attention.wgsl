// Chapter 2.5: flash attention on the GPU. out [B, Hq, L, D] = softmax(q k^T * scale + mask) v for q
// [B, Hq, L, D] and k, v [B, Hkv, S, D] (contiguous; float32 or bf16), where query head h reads kv head
// h / (Hq / Hkv). The mask is none, "causal" (query i sees key j when j <= i + S - L: the L queries are the
// last L of the S positions), or an additive float32 tensor read through mask_strides (0 along a dimension it
// is broadcast over).
//
// Workgroup (x, y, z) takes BQ query rows (block x) of head y of batch row z, and walks the keys in tiles of
// BK, in workgroup memory. The row's softmax is computed online (chapter 2.4): each row keeps its running
// maximum m, the sum l of exp(score - m) and the output o = sum exp(score - m) v, all unnormalised; when a tile
// raises the maximum to m', l and o are first multiplied by exp(m - m'). Per tile, with barriers between the
// steps because each reads what the others wrote:
//   1. load the K and V tiles (zeros past S);
//   2. the BQ x BK scores (q was loaded once, already multiplied by scale), -inf where a key is hidden;
//   3. per row, the new maximum, the rescale factor, the exponentials (in place of the scores) and l;
//   4. o = o * rescale + p v, each invocation over its share of the BQ x D outputs.
// At the end out = o / l, and 0 for a row that saw no key (l = 0), not 0 / 0. With "causal", a key tile that
// starts after the last key the block's last row sees is hidden from every row of the block: the loop stops
// before it. The loops over D and over a tile take their bounds from params rather than the constants, so
// that compilers do not unroll them (a software GPU then compiles for seconds).

override WG: u32 = 64u;  // invocations per workgroup
override BQ: u32 = 16u;  // query rows per workgroup
override BK: u32 = 16u;  // keys per tile
override D: u32 = 64u;  // the head dim (sizes the tiles)

const MASK_NONE = 0u;
const MASK_CAUSAL = 1u;
const MASK_TENSOR = 2u;

struct Params {
  l: u32,
  s: u32,
  d: u32,  // = D
  bk: u32,  // = BK
  hq: u32,
  hkv: u32,
  scale: f32,
  mask_kind: u32,  // MASK_NONE, MASK_CAUSAL or MASK_TENSOR
  mask_strides: vec4<u32>,  // elements per step along b, h, l, s (0 where the mask is broadcast)
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> q: array<u32>;  // q_load(i)
@group(0) @binding(2) var<storage, read> k: array<u32>;  // k_load(i)
@group(0) @binding(3) var<storage, read> v: array<u32>;  // v_load(i)
@group(0) @binding(4) var<storage, read> mask: array<u32>;  // mask_load(i), with MASK_TENSOR
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

var<workgroup> q_tile: array<f32, BQ * D>;
var<workgroup> k_tile: array<f32, BK * D>;
var<workgroup> v_tile: array<f32, BK * D>;
var<workgroup> o_tile: array<f32, BQ * D>;
var<workgroup> p_tile: array<f32, BQ * BK>;  // the scores, then their exponentials
var<workgroup> row_max: array<f32, BQ>;
var<workgroup> row_sum: array<f32, BQ>;
var<workgroup> row_rescale: array<f32, BQ>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let L = params.l;
  let S = params.s;
  let d = params.d;
  let q0 = wid.x * BQ;
  let h = wid.y;
  let b = wid.z;
  let q_base = (b * params.hq + h) * L * d;  // row 0 of this head of q (and of out)
  let kv_base = (b * params.hkv + h / (params.hq / params.hkv)) * S * d;
  let mask_base = b * params.mask_strides.x + h * params.mask_strides.y;

  for (var i = lid; i < BQ * d; i += WG) {
    let row = q0 + i / d;
    q_tile[i] = select(0.0, q_load(q_base + row * d + i % d) * params.scale, row < L);
    o_tile[i] = 0.0;
  }
  for (var r = lid; r < BQ; r += WG) {
    row_max[r] = -inf();
    row_sum[r] = 0.0;
  }
  // The keys this block reads: all of them, or with "causal" those its last row sees (the rest are skipped).
  var s_end = S;
  if (params.mask_kind == MASK_CAUSAL) { s_end = u32(clamp(i32(q0 + BQ + S) - i32(L), 0, i32(S))); }
  workgroupBarrier();

  for (var s0 = 0u; s0 < s_end; s0 += BK) {
    // 1. The K and V tiles.
    for (var i = lid; i < BK * d; i += WG) {
      let key = s0 + i / d;
      let inside = key < S;
      k_tile[i] = select(0.0, k_load(kv_base + key * d + i % d), inside);
      v_tile[i] = select(0.0, v_load(kv_base + key * d + i % d), inside);
    }
    workgroupBarrier();

    // 2. The scores of the tile.
    for (var i = lid; i < BQ * BK; i += WG) {
      let r = i / BK;
      let qi = q0 + r;
      let key = s0 + i % BK;
      var score = -inf();
      let visible = params.mask_kind != MASK_CAUSAL || key + L <= qi + S;
      if (qi < L && key < S && visible) {
        score = 0.0;
        for (var e = 0u; e < d; e++) { score = fma(q_tile[r * d + e], k_tile[(i % BK) * d + e], score); }
        if (params.mask_kind == MASK_TENSOR) {
          score += mask_load(mask_base + qi * params.mask_strides.z + key * params.mask_strides.w);
        }
      }
      p_tile[i] = score;
    }
    workgroupBarrier();

    // 3. The online softmax, one invocation per row.
    for (var r = lid; r < BQ; r += WG) {
      let old_max = row_max[r];
      var m = old_max;
      for (var c = 0u; c < params.bk; c++) { m = max(m, p_tile[r * BK + c]); }
      // A row that has seen no visible key yet keeps m = -inf, and exp(-inf - -inf) would be NaN.
      var rescale = 1.0;
      var sum = 0.0;
      if (m != -inf()) {
        rescale = exp(old_max - m);
        for (var c = 0u; c < params.bk; c++) {
          let p = exp(p_tile[r * BK + c] - m);
          p_tile[r * BK + c] = p;
          sum += p;
        }
      } else {
        for (var c = 0u; c < params.bk; c++) { p_tile[r * BK + c] = 0.0; }
      }
      row_max[r] = m;
      row_sum[r] = row_sum[r] * rescale + sum;
      row_rescale[r] = rescale;
    }
    workgroupBarrier();

    // 4. The outputs: rescaled, plus the tile's exponentials times its values.
    for (var i = lid; i < BQ * d; i += WG) {
      let r = i / d;
      var o = o_tile[i] * row_rescale[r];
      for (var c = 0u; c < params.bk; c++) { o = fma(p_tile[r * BK + c], v_tile[c * d + i % d], o); }
      o_tile[i] = o;
    }
    workgroupBarrier();  // the next tile overwrites k_tile, v_tile and p_tile
  }

  for (var i = lid; i < BQ * d; i += WG) {
    let row = q0 + i / d;
    if (row < L) {
      let l = row_sum[i / d];
      out[q_base + row * d + i % d] = select(o_tile[i] / l, 0.0, l == 0.0);
    }
  }
}
