// Scaled dot-product attention, flash style: out [..., Hq, L, D] = softmax(q k^T * scale + mask) v for q
// [..., Hq, L, D] and k, v [..., Hkv, S, D] (any strides), where query head h reads kv head h / (Hq / Hkv)
// (grouped-query attention). The mask is none, an additive tensor broadcast to [..., Hq, L, S], or causal:
// query i sees key j when j <= i + S - L (the L queries are the last L of the S positions).
//
// The plain algorithm computes a row of scores, its softmax, then the weighted sum of v: L x S scores in
// memory. Instead (online softmax) a workgroup takes BQ query rows and walks the keys in tiles of BK:
// 1. stage the K and V tiles in workgroup memory (q's rows are staged once, pre-multiplied by scale);
// 2. compute the BQ x BK scores of the tile;
// 3. per row, fold the tile into the running max m and sum l of exp(score - m): when m grows to m', the sum
//    so far and the output accumulated so far are rescaled by exp(m - m');
// 4. add the tile's exp(score - m') v to the output accumulators.
// At the end the output is divided by l; a row that saw no key (all masked) is zeros, as the CPU's softmax
// makes it. With the causal mask, tiles past the last key of the block's last query are skipped.
// An invocation of (row r, lane t) owns features t, t + TD, t + 2 TD and t + 3 TD of its row's output.
// The loops over D and over a tile's keys take their bounds from params, not from the overrides: a compiler
// that sees constant bounds unrolls them, and Mesa's llvmpipe then spends seconds compiling each variant.
// Workgroup (x, y, z): query block x, query head y, batch z. Typed bindings (shader.ts): q, k, v, mask.

override TD: u32 = 16u;  // invocations per query row: ceil(D / DPT)
override BQ: u32 = 16u;  // query rows per workgroup
override BK: u32 = 32u;  // keys per tile
override D: u32 = 64u;  // the head dim
override MASK: u32 = 0u;
override NBATCH: u32 = 0u;

const MASK_NONE = 0u;
const MASK_CAUSAL = 1u;
const MASK_TENSOR = 2u;
const DPT = 4u;  // output features per invocation

struct Params {
  l: u32,
  s: u32,
  hq: u32,
  groups: u32,  // Hq / Hkv
  scale: f32,
  d: u32,  // = D
  bk: u32,  // = BK
  offsets: vec4<i32>,  // the first element of q, k, v, mask
  head_strides: vec4<i32>,  // along the heads
  row_strides: vec4<i32>,  // along L (q, mask) or S (k, v)
  col_strides: vec4<i32>,  // along D (q, k, v) or S (mask)
  batch_shape: array<vec4<u32>, 2>,
  batch_strides: array<vec4<i32>, 6>,  // per leading dim: the strides of q, k, v, mask
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> q: array<u32>;
@group(0) @binding(2) var<storage, read> k: array<u32>;
@group(0) @binding(3) var<storage, read> v: array<u32>;
@group(0) @binding(4) var<storage, read> mask: array<u32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

var<workgroup> q_tile: array<f32, BQ * D>;
var<workgroup> k_tile: array<f32, BK * D>;
var<workgroup> v_tile: array<f32, BK * D>;
var<workgroup> p_tile: array<f32, BQ * BK>;  // scores, then their exponentials
var<workgroup> row_max: array<f32, BQ>;
var<workgroup> row_sum: array<f32, BQ>;
var<workgroup> row_rescale: array<f32, BQ>;

@compute @workgroup_size(TD * BQ)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let L = params.l;
  let S = params.s;
  let WG = TD * BQ;
  let r = lid / TD;
  let t = lid % TD;
  let q0 = wid.x * BQ;
  let h = wid.y;
  let kv_head = vec4<i32>(i32(h), i32(h / params.groups), i32(h / params.groups), i32(h));
  let base = params.offsets + walk(wid.z, NBATCH, params.batch_shape, params.batch_strides) + kv_head * params.head_strides;

  for (var i = lid; i < BQ * D; i += WG) {
    let row = q0 + i / D;
    var value = 0.0;
    if (row < L) { value = q_load(u32(base.x + i32(row) * params.row_strides.x + i32(i % D) * params.col_strides.x)) * params.scale; }
    q_tile[i] = value;
  }
  if (lid < BQ) {
    row_max[lid] = -inf();
    row_sum[lid] = 0.0;
  }
  var acc: array<f32, DPT>;

  // The keys this block reads: all of them, or with the causal mask those its last row sees.
  var s_end = S;
  if (MASK == MASK_CAUSAL) { s_end = u32(clamp(i32(q0 + BQ + S) - i32(L), 0, i32(S))); }
  workgroupBarrier();

  for (var s0 = 0u; s0 < s_end; s0 += BK) {
    // 1. The K and V tiles (zeros past S).
    for (var i = lid; i < BK * D; i += WG) {
      let key = s0 + i / D;
      let d = i32(i % D);
      var kv = vec2<f32>(0.0);
      if (key < S) {
        kv.x = k_load(u32(base.y + i32(key) * params.row_strides.y + d * params.col_strides.y));
        kv.y = v_load(u32(base.z + i32(key) * params.row_strides.z + d * params.col_strides.z));
      }
      k_tile[i] = kv.x;
      v_tile[i] = kv.y;
    }
    workgroupBarrier();

    // 2. Scores; -inf where a key is masked or past S, or the row is past L.
    for (var i = lid; i < BQ * BK; i += WG) {
      let qi = q0 + i / BK;
      let c = i % BK;
      let key = s0 + c;
      var score = -inf();
      if (qi < L && key < S && (MASK != MASK_CAUSAL || key + L <= qi + S)) {
        score = 0.0;
        for (var d = 0u; d < params.d; d++) { score = fma(q_tile[(i / BK) * D + d], k_tile[c * D + d], score); }
        if (MASK == MASK_TENSOR) {
          score += mask_load(u32(base.w + i32(qi) * params.row_strides.w + i32(key) * params.col_strides.w));
        }
      }
      p_tile[i] = score;
    }
    workgroupBarrier();

    // 3. The online softmax of each row, by one invocation per row.
    if (lid < BQ) {
      let old_max = row_max[lid];
      var m = old_max;
      for (var c = 0u; c < params.bk; c++) { m = max(m, p_tile[lid * BK + c]); }
      var rescale = 1.0;
      var sum = 0.0;
      if (m != -inf()) {
        rescale = exp(old_max - m);
        for (var c = 0u; c < params.bk; c++) {
          let e = exp(p_tile[lid * BK + c] - m);
          p_tile[lid * BK + c] = e;
          sum += e;
        }
      } else {
        for (var c = 0u; c < params.bk; c++) { p_tile[lid * BK + c] = 0.0; }
      }
      row_max[lid] = m;
      row_sum[lid] = row_sum[lid] * rescale + sum;
      row_rescale[lid] = rescale;
    }
    workgroupBarrier();

    // 4. Rescale this invocation's outputs and add the tile's weighted values.
    let rescale = row_rescale[r];
    for (var u = 0u; u < DPT; u++) {
      let d = t + u * TD;
      if (d < D) {
        var o = acc[u] * rescale;
        for (var c = 0u; c < params.bk; c++) { o = fma(p_tile[r * BK + c], v_tile[c * D + d], o); }
        acc[u] = o;
      }
    }
    workgroupBarrier();  // the next tile overwrites k_tile, v_tile and p_tile
  }

  let qi = q0 + r;
  if (qi < L) {
    let l = row_sum[r];
    let row = ((wid.z * params.hq + h) * L + qi) * D;
    for (var u = 0u; u < DPT; u++) {
      let d = t + u * TD;
      if (d < D) { out[row + d] = select(acc[u] / l, 0.0, l == 0.0); }
    }
  }
}
