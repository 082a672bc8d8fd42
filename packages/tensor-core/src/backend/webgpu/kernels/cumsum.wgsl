// Inclusive prefix sums over the last axis. One workgroup per row walks it in tiles of WG elements: a scan of
// the tile in workgroup memory (Hillis-Steele: log2(WG) steps, each adding the value `offset` places back),
// plus the running total of the tiles before. Sums are f32, or i32 words (two's complement, wrapping past
// 2^31) for integer tensors. Rows as in reduce.wgsl; out is contiguous [rows, n].
// Typed binding (shader.ts): x.

override WG: u32 = 256u;
override NDIM: u32 = 0u;
override INTEGER: bool = false;

struct Params {
  rows: u32,
  n: u32,
  x_offset: i32,
  x_stride: i32,
  shape: array<vec4<u32>, 2>,
  strides: array<vec4<i32>, 6>,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<u32>;
@group(0) @binding(2) var<storage, read_write> out: array<u32>;

var<workgroup> scan: array<u32, WG>;

// Values travel as words: f32 bits, or i32 bits when INTEGER.
fn add(a: u32, b: u32) -> u32 {
  if (INTEGER) { return bitcast<u32>(bitcast<i32>(a) + bitcast<i32>(b)); }
  return bitcast<u32>(bitcast<f32>(a) + bitcast<f32>(b));
}

fn load(e: u32) -> u32 {
  if (INTEGER) { return bitcast<u32>(x_int(e)); }
  return bitcast<u32>(x_load(e));
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let row = flat_workgroup(wid, nwg);
  if (row >= params.rows) { return; }
  let n = params.n;
  let base = params.x_offset + walk(row, NDIM, params.shape, params.strides).x;
  var carry = 0u;  // 0 is also the bits of 0.0
  for (var tile = 0u; tile < n; tile += WG) {
    let i = tile + lid;
    scan[lid] = select(0u, load(u32(base + i32(i) * params.x_stride)), i < n);
    workgroupBarrier();
    for (var offset = 1u; offset < WG; offset *= 2u) {
      // A branch rather than select(), which would also read scan[lid - offset] where it wraps around.
      var back = 0u;
      if (lid >= offset) { back = scan[lid - offset]; }
      workgroupBarrier();
      scan[lid] = add(scan[lid], back);
      workgroupBarrier();
    }
    if (i < n) { out[row * n + i] = add(carry, scan[lid]); }
    carry = add(carry, scan[WG - 1u]);
    workgroupBarrier();  // the next tile overwrites scan
  }
}
