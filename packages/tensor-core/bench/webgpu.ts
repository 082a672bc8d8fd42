// pnpm --filter @tiny-llm/tensor-core bench:webgpu [--shapes 0.5b|7b] [--matmul N] [--json FILE]
//
// The WebGPU backend on the adapter initWebGPU finds (TINY_LLM_WEBGPU_BACKEND chooses one), each figure next to
// a ceiling measured in the same run:
//   read bandwidth     a plain WGSL kernel reading a buffer with vec4 loads (bench/read_bandwidth.wgsl): the
//                      ceiling of every memory-bound kernel
//   GEMV M = 1         the decode step's matmul with bf16 and MLX 4-bit weights of a model's MLP shape, in GB/s
//                      of weights streamed, as a ratio of the read bandwidth
//   matmul f32 N^3     the tiled kernel, in GFLOP/s
// and the CPU backend on the same bf16 GEMV and f32 matmul, for the GPU / CPU ratio (GPU timing:
// bench/webgpu-kernels.ts).
import { writeFileSync } from 'node:fs';
import { resolve } from 'node:path';
import * as tc from '../src/index.ts';
import { bestSeconds, flagsOf } from './native-kernels.ts';
import { gpuSeconds, matmulGflops, readBandwidthGBs } from './webgpu-kernels.ts';

/** Weights [N, K] of one MLP projection (up/gate): Qwen2-0.5B's and Qwen2-7B's. */
const SHAPES: Record<string, [number, number]> = { '0.5b': [4864, 896], '7b': [18944, 3584] };

/** Pseudo-random words: bf16 ones with a small exponent, so that every value is finite, or any uint32. */
function randomWords(n: number, dtype: 'bfloat16' | 'uint32'): Uint16Array | Uint32Array {
  const words = dtype === 'bfloat16' ? new Uint16Array(n) : new Uint32Array(n);
  let s = 12345;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    words[i] = dtype === 'bfloat16' ? 0x3c00 | (s >>> 25) : s;
  }
  return words;
}

/** A tensor over words already made, on `device`. */
const wordTensor = (words: Uint16Array | Uint32Array, dtype: tc.DType, shape: number[], device: tc.Backend) =>
  new tc.Tensor(device.upload(words), dtype, shape);

async function main(): Promise<void> {
  const usage = `bench:webgpu [--shapes ${Object.keys(SHAPES).join('|')}] [--matmul N] [--json FILE]`;
  const flags = flagsOf(usage, {
    shapes: { type: 'string', default: '0.5b' },
    matmul: { type: 'string', default: '512' },
    json: { type: 'string' },
  });
  const shapeName = flags.shapes;
  const matmulSize = Number(flags.matmul);
  const jsonPath = flags.json;
  if (!Object.hasOwn(SHAPES, shapeName) || !Number.isSafeInteger(matmulSize) || matmulSize < 1) {
    console.error(`usage: ${usage}`);
    process.exit(2);
  }
  const [n, k] = SHAPES[shapeName];
  const gpu = await tc.initWebGPU();
  console.log(`adapter: ${gpu.adapterName}`);
  console.log(`limits: maxBufferSize ${gpu.limits.maxBufferSize}, maxStorageBufferBindingSize ${gpu.limits.maxStorageBufferBindingSize}\n`);

  // 256 MB, far beyond any cache, unless one binding may not be that large (Mesa's GLES allows 128 MiB).
  const megabytes = Math.min(256, gpu.limits.maxStorageBufferBindingSize / 2 ** 20);
  const bandwidth = await readBandwidthGBs(gpu, megabytes);
  const xValues = Array.from({ length: k }, (_, i) => Math.sin(i));
  const x = tc.tensor(xValues, { shape: [1, k] });
  const xGpu = tc.tensor(xValues, { shape: [1, k], device: gpu });

  const bf16Words = randomWords(n * k, 'bfloat16');
  const bf16 = wordTensor(bf16Words, 'bfloat16', [n, k], gpu);
  const bf16Seconds = await gpuSeconds(gpu, () => tc.matmul(xGpu, tc.transpose(bf16)), 20);
  const groups = [n, k / 64];
  const q4 = new tc.QuantizedWeight(
    wordTensor(randomWords((n * k) / 8, 'uint32'), 'uint32', [n, k / 8], gpu),
    wordTensor(randomWords(n * (k / 64), 'bfloat16'), 'bfloat16', groups, gpu),
    wordTensor(randomWords(n * (k / 64), 'bfloat16'), 'bfloat16', groups, gpu),
    64,
    4,
  );
  const q4Seconds = await gpuSeconds(gpu, () => tc.fast.quantizedMatmul(xGpu, q4), 20);
  const q4Bytes = (n * k) / 2 + n * (k / 64) * 4;

  const matmulGpu = await matmulGflops(gpu, matmulSize);
  const a = tc.random.uniform([matmulSize, matmulSize], { seed: 1 });
  const b = tc.random.uniform([matmulSize, matmulSize], { seed: 2 });
  const flops = 2 * matmulSize ** 3;

  const bf16Cpu = wordTensor(bf16Words, 'bfloat16', [n, k], tc.cpu);
  const cpuGemv = bestSeconds(() => tc.matmul(x, tc.transpose(bf16Cpu)).dispose(), 10);
  const cpuMatmul = bestSeconds(() => tc.matmul(a, b).dispose(), 3);

  const results = {
    adapter: gpu.adapterName,
    read_bandwidth_gb_s: bandwidth,
    gemv_bf16_gb_s: (n * k * 2) / bf16Seconds / 1e9,
    gemv_q4_gb_s: q4Bytes / q4Seconds / 1e9,
    matmul_f32_gflops: matmulGpu,
    cpu_gemv_bf16_gb_s: (n * k * 2) / cpuGemv / 1e9,
    cpu_matmul_f32_gflops: flops / cpuMatmul / 1e9,
  };
  const f = (v: number, d = 1) => v.toFixed(d);
  const rows: [string, string, string][] = [
    [`read bandwidth (${megabytes} MB)`, `${f(bandwidth)} GB/s`, 'the ceiling of memory-bound kernels'],
    [
      `GEMV bf16 ${n}x${k}`,
      `${f(results.gemv_bf16_gb_s)} GB/s`,
      `${f(results.gemv_bf16_gb_s / bandwidth, 2)} of read bandwidth; ${f(results.gemv_bf16_gb_s / results.cpu_gemv_bf16_gb_s, 2)}x the CPU's ${f(results.cpu_gemv_bf16_gb_s)} GB/s`,
    ],
    [
      `GEMV 4-bit ${n}x${k}`,
      `${f(results.gemv_q4_gb_s)} GB/s`,
      `${f(results.gemv_q4_gb_s / bandwidth, 2)} of read bandwidth (words, scales and biases)`,
    ],
    [
      `matmul f32 ${matmulSize}^3`,
      `${f(results.matmul_f32_gflops)} GFLOP/s`,
      `${f(results.matmul_f32_gflops / results.cpu_matmul_f32_gflops, 2)}x the CPU's ${f(results.cpu_matmul_f32_gflops)} GFLOP/s`,
    ],
  ];
  for (const [name, value, note] of rows) console.log(`${name.padEnd(26)}${value.padEnd(16)}${note}`);
  if (jsonPath) {
    const path = resolve(process.env.INIT_CWD ?? process.cwd(), jsonPath);
    writeFileSync(path, `${JSON.stringify(results, null, 2)}\n`);
    console.log(`\nwrote ${path}`);
  }
  gpu.destroy();
}

await main();
