// A GPU kernel written outside tensor-core and run on its tensors (test/wgsl-extension.test.ts shows the call):
// out = alpha * x + beta, elementwise, for x of any dtype; out is float32.
//
//   const kernel = new tc.WgslKernel('scale_shift', readFileSync('scale_shift.wgsl', 'utf8'));
//   gpu.run(kernel, { tensors: { x, out }, params: { n: x.size, alpha: 2, beta: 1 }, workgroups: Math.ceil(x.size / 64) });

override WG: u32 = 64u;

// The scalar arguments: `params` in the call, field by field.
struct Params {
  n: u32,
  alpha: f32,
  beta: f32,
}

@group(0) @binding(0) var<uniform> params: Params;
// x is declared as words, so the runtime generates x_load(i): element i as f32, whatever x's dtype (bf16 and
// f16 are 16-bit halves of the words).
@group(0) @binding(1) var<storage, read> x: array<u32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
  let i = id.x;
  if (i >= params.n) { return; }
  out[i] = params.alpha * x_load(i) + params.beta;
}
