// WGSL kernels of other packages (WebGPUBackend.run): the example kernel examples/scale_shift.wgsl, and a
// kernel in the shape of the course's GPU chapters (words of packed data, bf16 scales, workgroup memory).
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import * as tc from '../src/index.ts';
import { expectClose, seeded, useGpu } from '../src/testing.ts';

const gpu = useGpu();
const example = new tc.WgslKernel('scale_shift', readFileSync(new URL('../examples/scale_shift.wgsl', import.meta.url), 'utf8'));
const gpuTensor = (values: ArrayLike<number>, shape: number[], dtype: tc.DType = 'float32') =>
  tc.tensor(values, { shape, dtype, device: gpu() });
const bf16 = (v: number) => {
  const bits = new Uint32Array(new Float32Array([v]).buffer)[0];
  return new Float32Array(new Uint32Array([(((bits + 0x7fff + ((bits >>> 16) & 1)) >>> 16) << 16) >>> 0]).buffer)[0];
};

describe('the example kernel (examples/scale_shift.wgsl)', () => {
  const scaleShift = (x: tc.Tensor, out: tc.Tensor, constants?: Record<string, number>) =>
    gpu().run(example, {
      tensors: { x, out },
      params: { n: x.size, alpha: 2.5, beta: -1 },
      constants,
      workgroups: Math.ceil(x.size / (constants?.WG ?? 64)),
    });

  it('computes alpha * x + beta like a plain loop, for sizes that are not multiples of the workgroup', async () => {
    for (const n of [1, 1000]) {
      const values = seeded(n, n).map(Math.fround);
      const out = tc.empty([n], 'float32', gpu());
      scaleShift(gpuTensor(values, [n]), out);
      expectClose(
        await out.data(),
        values.map((v) => 2.5 * v - 1),
        1e-6,
        1e-6,
      );
    }
  });

  it('reads bf16 through the generated accessor, and takes override constants', async () => {
    const values = seeded(300, 3).map(bf16);
    const out = tc.empty([300], 'float32', gpu());
    scaleShift(gpuTensor(values, [300], 'bfloat16'), out, { WG: 128 });
    expectClose(
      await out.data(),
      values.map((v) => 2.5 * v - 1),
      1e-6,
      1e-6,
    );
  });

  it('sees strided inputs and outputs at any offset from their first element, row-major', async () => {
    const values = seeded(12, 5).map(Math.fround);
    const x = tc.transpose(gpuTensor(values, [3, 4])); // [4, 3], not contiguous: copied for the kernel
    const buffer = tc.zeros([14], { device: gpu() });
    const out = tc.reshape(tc.slice(buffer, [[1, 13]]), [4, 3]); // starts at element 1: written back after
    scaleShift(x, out);
    const transposed = Array.from({ length: 12 }, (_, i) => values[(i % 3) * 4 + Math.floor(i / 3)]);
    expectClose(
      await buffer.data(),
      [-0, ...transposed.map((v) => 2.5 * v - 1), 0].map((v) => v || 0),
      1e-6,
      1e-6,
    );
  });

  it('rejects bad calls with the kernel name and what is wrong', async () => {
    const x = gpuTensor([1, 2], [2]);
    const out = tc.empty([2], 'float32', gpu());
    const params = { n: 2, alpha: 1, beta: 0 };
    expect(() => gpu().run(example, { tensors: { x }, params, workgroups: 1 })).toThrow(
      /scale_shift: kernel scale_shift needs a buffer for binding out/,
    );
    expect(() => gpu().run(example, { tensors: { x, out, y: x }, params, workgroups: 1 })).toThrow(
      /scale_shift: the kernel has no storage binding y/,
    );
    expect(() => gpu().run(example, { tensors: { x, out }, params: { n: 2, alpha: 1 }, workgroups: 1 })).toThrow(
      /scale_shift: missing params.beta/,
    );
    expect(() => gpu().run(example, { tensors: { x, out }, params: { ...params, n: -1 }, workgroups: 1 })).toThrow(
      /params.n must be a u32, got -1/,
    );
    expect(() => gpu().run(example, { tensors: { x, out: x }, params, workgroups: 1 })).toThrow(/out and x share storage/);
    expect(() => gpu().run(example, { tensors: { x: tc.tensor([1, 2], { dtype: 'float32' }), out }, params, workgroups: 1 })).toThrow(
      /scale_shift: the tensor float32\[2\] lives on the cpu backend/,
    );
    expect(() => gpu().run(example, { tensors: { x, out }, params, workgroups: 70000 })).toThrow(/maxComputeWorkgroupsPerDimension/);
    // WGSL errors come from the compiler at the next read, with the kernel's name and its own line numbers.
    const broken = new tc.WgslKernel(
      'broken',
      '@group(0) @binding(0) var<storage, read_write> out: array<f32>;\n@compute @workgroup_size(1)\nfn main() { out[0] = undefined_name; }\n',
    );
    gpu().run(broken, { tensors: { out }, workgroups: 1 });
    await expect(out.data()).rejects.toThrow(/:3:\d+ error: unresolved value 'undefined_name'[\s\S]*broken/);
  });
});

describe('a kernel in the shape of the course GPU chapters', () => {
  // A 4-bit GEMV, one invocation per output: packed words (uint32), bf16 scales and biases read through the
  // accessors, and x staged in workgroup memory.
  const source = `
override K: u32 = 64u;
struct Params { n: u32, group_size: u32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<u32>;
@group(0) @binding(3) var<storage, read> scales: array<u32>;
@group(0) @binding(4) var<storage, read> biases: array<u32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
var<workgroup> xs: array<f32, K>;

@compute @workgroup_size(32)
fn main(@builtin(global_invocation_id) id: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  for (var i = lid; i < K; i += 32u) { xs[i] = x[i]; }
  workgroupBarrier();
  let n = id.x;
  if (n >= params.n) { return; }
  var acc = 0.0;
  for (var k = 0u; k < K; k++) {
    let q = (w[n * (K / 8u) + k / 8u] >> ((k % 8u) * 4u)) & 0xfu;
    let g = n * (K / params.group_size) + k / params.group_size;
    acc += xs[k] * (f32(q) * scales_load(g) + biases_load(g));
  }
  out[n] = acc;
}`;
  const gemv = new tc.WgslKernel('gemv_q4', source);

  it('matches the plain loop over the dequantized weight', async () => {
    const [n, k, group] = [40, 64, 32];
    const q = tc.quantize(tc.tensor(seeded(n * k, 71), { shape: [n, k] }), 4, group);
    const words = q.weight.toArray() as Uint32Array;
    const [scales, biases] = [q.scales.toArray(), q.biases.toArray()];
    const x = seeded(k, 73).map(Math.fround);
    const expected = Array.from({ length: n }, (_, r) => {
      let s = 0;
      for (let j = 0; j < k; j++) {
        const value = (words[r * (k / 8) + Math.floor(j / 8)] >>> ((j % 8) * 4)) & 0xf;
        const g = r * (k / group) + Math.floor(j / group);
        s += x[j] * (value * scales[g] + biases[g]);
      }
      return s;
    });
    const out = tc.empty([n], 'float32', gpu());
    const onGpu = (t: tc.Tensor) => tc.toDevice(t, gpu());
    gpu().run(gemv, {
      tensors: { x: gpuTensor(x, [k]), w: onGpu(q.weight), scales: onGpu(q.scales), biases: onGpu(q.biases), out },
      params: { n, group_size: group },
      constants: { K: k },
      workgroups: Math.ceil(n / 32),
    });
    expectClose(await out.data(), expected, 1e-4, 1e-5);
  });
});
