// NotImplemented(chapter 2.3): delete this line when you start writing the kernel.
//
// Chapter 2.3: quantized matmul on the GPU. Read docs/week2/2.3-quantized-matmul-gpu.md.
//
// out [M, N] = x [M, K] @ W.T for an MLX-quantized W [N, K]: packed words w [N, K * bits / 32], scales and
// biases [N, K / group_size]; value q of W stands for q * scale + bias (chapter 2.2's layout).
//
// Given (src/quantized-matmul-gpu.ts runs the kernel so): one workgroup of WG invocations per output column n
// and per block of ROWS rows of x. Workgroup (x, y, z) is column y * (workgroups along x) + x (N may exceed the
// 65535 workgroups of one dimension) and rows z * ROWS .. z * ROWS + ROWS - 1. The bindings, Params and the
// constants below are what the wrapper passes: keep them. x, scales and biases are declared as words; read
// element i as f32 with x_load(i), scales_load(i), biases_load(i), whatever their dtype.

override WG: u32 = 64u;  // invocations per workgroup, a power of two
const ROWS = 4u;  // rows of x per workgroup

struct Params {
  m: u32,
  n: u32,
  k: u32,
  bits: u32,
  group_size: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<u32>;  // [M, K]: x_load(i)
@group(0) @binding(2) var<storage, read> w: array<u32>;  // [N, K * bits / 32]
@group(0) @binding(3) var<storage, read> scales: array<u32>;  // [N, K / group_size]: scales_load(i)
@group(0) @binding(4) var<storage, read> biases: array<u32>;  // biases_load(i)
@group(0) @binding(5) var<storage, read_write> out: array<f32>;  // [M, N]

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  // Your kernel: out[m, n] for n = wid.y * nwg.x + wid.x and m = wid.z * ROWS + 0 .. ROWS - 1 (those < M).
  // 1. Split weight row n into chunks of 32 values (`bits` whole words, inside one group); invocation lid takes
  //    chunks lid, lid + WG, ...
  // 2. Per chunk: unpack each value, accumulate sum(q * x) and sum(x) for each row, then add
  //    scale * sum(q * x) + bias * sum(x).
  // 3. Add the WG partial sums in workgroup memory (a tree, with workgroupBarrier() between its steps); one
  //    invocation writes the results.
}
