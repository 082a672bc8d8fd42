// Gathers by index. Two modes:
//   take (ALONG_AXIS false): out[i, j] = table[indices[i], j], whole rows of a table [R, ...] (embeddings);
//     j walks the row's dims.
//   takeAlongAxis (ALONG_AXIS true): out[r, j] = x[r, indices[r, j]] along x's last axis; r walks the leading
//     dims of x.
// One invocation per element of out (contiguous [count / inner, inner]). An index outside [0, limit) writes
// 0 and is recorded in `checks` ([code, index, position, limit], the first one only), which the runtime
// reports at the next read. Indices are int32 or uint32 words; no axis has 2^31 elements, so uint32 indices
// past that are out of range as the negative int32 they read as. Typed bindings (shader.ts): x, out.

override WG: u32 = 256u;
override NDIM: u32 = 0u;
override ALONG_AXIS: bool = false;

struct Params {
  count: u32,  // elements of out
  inner: u32,  // take: elements per table row; takeAlongAxis: indices per row
  limit: u32,  // the size of the indexed axis
  check: u32,  // the code that names the op in an index error
  x_offset: i32,
  indices_offset: u32,
  index_stride: i32,  // x's stride along the indexed axis
  shape: array<vec4<u32>, 2>,  // take: a row's dims; takeAlongAxis: x's leading dims
  strides: array<vec4<i32>, 6>,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<u32>;
@group(0) @binding(2) var<storage, read> indices: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<atomic<u32>>;
@group(0) @binding(4) var<storage, read_write> checks: array<atomic<u32>, 4>;

fn report(index: i32, position: u32) {
  loop {
    let r = atomicCompareExchangeWeak(&checks[0], 0u, params.check);
    if (r.exchanged) {
      atomicStore(&checks[1], bitcast<u32>(index));
      atomicStore(&checks[2], position);
      atomicStore(&checks[3], params.limit);
      return;
    }
    if (r.old_value != 0u) { return; }  // an earlier failure is reported instead
  }
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let e = flat_workgroup(wid, nwg) * WG + lid;
  if (e >= params.count) { return; }
  let outer = e / params.inner;
  let within = e % params.inner;
  let position = select(outer, e, ALONG_AXIS);
  let index = bitcast<i32>(indices[params.indices_offset + position]);
  if (index < 0 || u32(index) >= params.limit) {
    report(index, position);
    out_store_bits(e, 0u);
    return;
  }
  let walked = walk(select(within, outer, ALONG_AXIS), NDIM, params.shape, params.strides).x;
  out_store_bits(e, x_bits(u32(params.x_offset + index * params.index_stride + walked)));
}
