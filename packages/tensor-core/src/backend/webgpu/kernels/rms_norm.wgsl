// RMSNorm over the last axis: out = x / sqrt(mean(x^2) + eps) * weight, in f32. One workgroup per row: each
// invocation sums the squares of elements lid, lid + WG, ..., a tree in workgroup memory adds the WG sums,
// then every invocation scales its elements. Rows as in reduce.wgsl; out is contiguous f32 [rows, n].
// Typed bindings (shader.ts): x, weight.

override WG: u32 = 256u;  // a power of two
override NDIM: u32 = 0u;

struct Params {
  rows: u32,
  n: u32,
  x_offset: i32,
  x_stride: i32,
  weight_offset: i32,
  weight_stride: i32,
  eps: f32,
  shape: array<vec4<u32>, 2>,
  strides: array<vec4<i32>, 6>,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<u32>;
@group(0) @binding(2) var<storage, read> weight: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

var<workgroup> sums: array<f32, WG>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let row = flat_workgroup(wid, nwg);
  if (row >= params.rows) { return; }
  let n = params.n;
  let base = params.x_offset + walk(row, NDIM, params.shape, params.strides).x;
  var ss = 0.0;
  for (var i = lid; i < n; i += WG) {
    let v = x_load(u32(base + i32(i) * params.x_stride));
    ss = fma(v, v, ss);
  }
  sums[lid] = ss;
  workgroupBarrier();
  for (var step = WG / 2u; step > 0u; step /= 2u) {
    if (lid < step) { sums[lid] += sums[lid + step]; }
    workgroupBarrier();
  }
  let scale = inverseSqrt(sums[0] / f32(n) + params.eps);
  for (var i = lid; i < n; i += WG) {
    let v = x_load(u32(base + i32(i) * params.x_stride)) * scale;
    out[row * n + i] = v * weight_load(u32(params.weight_offset + i32(i) * params.weight_stride));
  }
}
