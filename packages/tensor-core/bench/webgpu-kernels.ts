// The ceilings of a WebGPU adapter, measured on it: what bench/webgpu.ts reports, and what the engine's bench
// --device webgpu compares the model with. GPU times are those of `reps` kernels recorded together and waited
// for once, best of a few rounds (the machine may be shared).
import { readFileSync } from 'node:fs';
import * as tc from '../src/index.ts';

/** Seconds per call of `run` (which records kernels and returns their output), best of `rounds`. */
export async function gpuSeconds(gpu: tc.WebGPUBackend, run: () => tc.Tensor, reps: number, rounds = 3): Promise<number> {
  await run().data(); // compile and warm up
  let best = Infinity;
  for (let r = 0; r < rounds; r++) {
    const t0 = performance.now();
    let last: tc.Tensor | null = null;
    for (let i = 0; i < reps; i++) {
      last?.dispose();
      last = run();
    }
    await tc.slice(last!, [[0, 1]]).data(); // waits for every kernel recorded before it
    best = Math.min(best, (performance.now() - t0) / 1e3 / reps);
    last!.dispose();
  }
  gpu.flush();
  return best;
}

/** The read bandwidth of a plain WGSL kernel (read_bandwidth.wgsl: vec4 loads) over `megabytes`, in GB/s. */
export async function readBandwidthGBs(gpu: tc.WebGPUBackend, megabytes: number): Promise<number> {
  const kernel = new tc.WgslKernel('read_bandwidth', readFileSync(new URL('./read_bandwidth.wgsl', import.meta.url), 'utf8'));
  const floats = (megabytes * 1024 * 1024) / 4;
  const data = tc.ones([floats], { device: gpu });
  const threads = 256 * Math.min(4096, gpu.limits.maxComputeWorkgroupsPerDimension);
  const run = () => {
    const out = tc.empty([threads], 'float32', gpu);
    gpu.run(kernel, { tensors: { data, out }, params: { vec4s: floats / 4, threads }, workgroups: threads / 256 });
    return out;
  };
  const seconds = await gpuSeconds(gpu, run, 10);
  data.dispose();
  return (floats * 4) / seconds / 1e9;
}

/** The tiled f32 matmul rate at n^3, in GFLOP/s. */
export async function matmulGflops(gpu: tc.WebGPUBackend, n: number, reps = 3): Promise<number> {
  const [a, b] = [1, 2].map((seed) => tc.random.uniform([n, n], { seed, device: gpu }));
  const seconds = await gpuSeconds(gpu, () => tc.matmul(a, b), reps);
  a.dispose();
  b.dispose();
  return (2 * n ** 3) / seconds / 1e9;
}
