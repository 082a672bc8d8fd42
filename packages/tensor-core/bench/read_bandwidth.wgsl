// The read-bandwidth ceiling of GPU kernels (bench/webgpu.ts): every invocation reads `data` with vec4 loads,
// grid-stride, and writes its sum, so that no read can be optimised away.
override WG: u32 = 256u;

struct Params {
  vec4s: u32,  // the length of data in vec4s
  threads: u32,  // invocations in the grid
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> data: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
  var acc = vec4<f32>(0.0);
  for (var i = id.x; i < params.vec4s; i += params.threads) { acc += data[i]; }
  out[id.x] = acc.x + acc.y + acc.z + acc.w;
}
