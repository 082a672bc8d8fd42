// Argsort of each row of x along its last axis: a bitonic sort of (key, index) pairs in `keys` and `order`
// ([rows, P], P the row length rounded up to a power of two). Comparing the index when keys tie makes the
// order total, so the result is the stable sort's; NaN and the padding sort last. Keys are words: f32 bits,
// or with INTEGER i32 ones (int32, uint8 and bool tensors, compared exactly).
// Three stages, one dispatch each, by STAGE:
//   STAGE_LOAD   keys and indices of every row; padding indices are >= n
//   STAGE_MERGE  one compare-exchange step of the network (params k, j): each invocation orders the pair
//                (i, i + j) of a block of size k, ascending in even blocks and descending in odd ones;
//                log2(P) * (log2(P) + 1) / 2 steps sort a row
//   STAGE_STORE  the first n indices of each row into out (int32)
// Rows as in layout.wgsl. Typed binding (shader.ts): x.

override WG: u32 = 256u;
override NDIM: u32 = 0u;
override STAGE: u32 = 0u;
override DESCENDING: bool = false;
override INTEGER: bool = false;

const STAGE_LOAD = 0u;
const STAGE_MERGE = 1u;
const STAGE_STORE = 2u;

struct Params {
  rows: Rows,
  p: u32,  // the padded row length
  k: u32,
  j: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<u32>;
@group(0) @binding(2) var<storage, read_write> keys: array<u32>;
@group(0) @binding(3) var<storage, read_write> order: array<u32>;
@group(0) @binding(4) var<storage, read_write> out: array<u32>;

// Whether element (key bits wa, index ia) comes before (wb, ib) in the sorted row.
fn before(wa: u32, ia: u32, wb: u32, ib: u32) -> bool {
  let pad_a = ia >= params.rows.n;
  let pad_b = ib >= params.rows.n;
  if (pad_a || pad_b) { return select(pad_b, ia < ib, pad_a && pad_b); }
  if (INTEGER) {
    let a = bitcast<i32>(wa);
    let b = bitcast<i32>(wb);
    if (a != b) { return select((a < b), (a > b), DESCENDING); }
    return ia < ib;
  }
  let ka = bitcast<f32>(wa);
  let kb = bitcast<f32>(wb);
  let nan_a = is_nan(ka);
  let nan_b = is_nan(kb);
  if (nan_a != nan_b) { return nan_b; }
  if (!nan_a && ka != kb) { return select((ka < kb), (ka > kb), DESCENDING); }
  return ia < ib;
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let g = flat_workgroup(wid, nwg) * WG + lid;
  let p = params.p;
  if (STAGE == STAGE_LOAD) {
    if (g >= params.rows.count * p) { return; }
    let row = g / p;
    let i = g % p;
    var key = 0u;
    if (i < params.rows.n) {
      let e = u32(row_start(params.rows, NDIM, row) + i32(i) * params.rows.stride);
      key = select(bitcast<u32>(x_load(e)), bitcast<u32>(x_int(e)), INTEGER);
    }
    keys[g] = key;
    order[g] = i;
  } else if (STAGE == STAGE_MERGE) {
    // Invocation g orders the pair (i, i + j) of its row: i has bit j clear.
    if (g >= params.rows.count * (p / 2u)) { return; }
    let row = g / (p / 2u);
    let t = g % (p / 2u);
    let i = 2u * params.j * (t / params.j) + t % params.j;
    let a = row * p + i;
    let b = a + params.j;
    let ascending = (i & params.k) == 0u;
    if (before(keys[b], order[b], keys[a], order[a]) == ascending) {
      let key = keys[a];
      keys[a] = keys[b];
      keys[b] = key;
      let index = order[a];
      order[a] = order[b];
      order[b] = index;
    }
  } else {
    if (g >= params.rows.count * params.rows.n) { return; }
    out[g] = order[(g / params.rows.n) * p + g % params.rows.n];
  }
}
