// Timing of the chapter 2.2 quantized matmul (native/quantized_matmul.cc) against its ceilings.
//
//   cd packages/reference && npx tsx bench/quantized-matmul.ts
//
// Decode (M = 1) is memory-bound: reported in GB/s of packed weights + scales + biases streamed per call, next
// to the read bandwidth of the pool measured in the same run (tensor-core's readBandwidthGBs). Prefill (M = 256)
// is compute-bound: reported in GFLOP/s next to tensor-core's float32 GEMM on the same shape.
import { pathToFileURL } from 'node:url';
import * as tc from '@tiny-llm/tensor-core';
import type { QuantizedWeight, Tensor } from '@tiny-llm/tensor-core';
import { benchGemm, bestSeconds, readBandwidthGBs } from '@tiny-llm/tensor-core/bench';
import { quantizedMatmul } from '../src/model/quantized-matmul.ts';

/** Deterministic pseudo-random 32-bit words (any bit pattern is a valid packed weight). */
function randomWords(count: number, seed: number): Uint32Array {
  const w = new Uint32Array(count);
  let s = seed >>> 0;
  for (let i = 0; i < count; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    w[i] = s ^ (s >>> 13);
  }
  return w;
}

/** bf16 values around `center` (small positive steps, as real scales; biases negative). */
function bf16Params(count: number, center: number): Tensor {
  const v = new Float32Array(count);
  for (let i = 0; i < count; i++) v[i] = center * (1 + ((i * 37) % 101) / 202);
  return tc.astype(tc.tensor(v), 'bfloat16');
}

// The last weight built, reused across rounds of one shape (building 70 MB of words takes a while, and
// fresh pages are slow to fault in on this VM).
let cached: { key: string; w: QuantizedWeight } | null = null;

/** A random quantized weight [n, k] (MLX layout, bf16 scales and biases). */
export function randomQuantizedWeight(n: number, k: number, bits: number, groupSize: number): QuantizedWeight {
  const key = `${n}x${k}/${bits}/${groupSize}`;
  if (cached?.key === key) return cached.w;
  if (cached) cached.w.dispose();
  const words = (k * bits) / 32;
  const weight = tc.reshape(tc.tensor(randomWords(n * words, n + k + bits), { dtype: 'uint32' }), [n, words]);
  const groups = k / groupSize;
  const scales = tc.reshape(bf16Params(n * groups, 0.01), [n, groups]);
  const biases = tc.reshape(bf16Params(n * groups, -0.08), [n, groups]);
  const w = new tc.QuantizedWeight(weight, scales, biases, groupSize, bits);
  cached = { key, w };
  return w;
}

/** Bytes a call streams: the packed weight and its scales and biases. */
function weightBytes(w: QuantizedWeight): number {
  return w.weight.size * 4 + w.scales.size * 2 + w.biases.size * 2;
}

/** Decode rate (M = 1) in GB/s of packed weights + scales + biases streamed per call. */
export function benchQuantizedGemv(n: number, k: number, bits: number, groupSize: number, reps?: number): { gbPerS: number } {
  const w = randomQuantizedWeight(n, k, bits, groupSize);
  const x = tc.tensor(
    Array.from({ length: k }, (_, i) => Math.sin(i)),
    { shape: [1, k] },
  );
  const bytes = weightBytes(w);
  // Small weights: batches of calls, so that the clock's resolution and the call cost do not dominate.
  const calls = Math.max(1, Math.floor(32e6 / bytes));
  const s = bestSeconds(
    () => {
      for (let i = 0; i < calls; i++) quantizedMatmul(x, w).dispose();
    },
    reps ?? (bytes > 32e6 ? 8 : 20),
  );
  x.dispose();
  return { gbPerS: (bytes * calls) / s / 1e9 };
}

/** Prefill rate in GFLOP/s (2 * M * N * K per call). */
export function benchQuantizedPrefill(m: number, n: number, k: number, bits: number, groupSize: number, reps = 8): { gflops: number } {
  const w = randomQuantizedWeight(n, k, bits, groupSize);
  const x = tc.tensor(
    Array.from({ length: m * k }, (_, i) => Math.sin(i)),
    { shape: [m, k] },
  );
  const s = bestSeconds(() => quantizedMatmul(x, w).dispose(), reps);
  x.dispose();
  return { gflops: (2 * m * n * k) / s / 1e9 };
}

/** Alternating rounds per figure (best of each kept): the host is shared, and one round can land in a burst. */
const ROUNDS = 5;

function main(): void {
  const f = (x: number, d = 1) => x.toFixed(d);
  console.log(`quantized matmul (reference, chapter 2.2): ${tc.native.numThreads()} threads, simd=${tc.native.cpuFeatures().simd}`);
  // The machine is shared: the ceiling and the kernels are measured in alternating rounds, best of each kept,
  // so that someone else's burst of work does not land on one side of a ratio only.
  const shapes: [number, number][] = [
    [4864, 896],
    [151936, 896],
  ];
  const configs: [number, number][] = [
    [4, 64],
    [8, 64],
  ];
  let bw = 0;
  const gemv = new Map<string, number>();
  for (const [n, k] of shapes) {
    for (const [bits, group] of configs) {
      const key = `${n}x${k} q${bits}/g${group}`;
      for (let round = 0; round < ROUNDS; round++) {
        bw = Math.max(bw, readBandwidthGBs(256, 2));
        gemv.set(key, Math.max(gemv.get(key) ?? 0, benchQuantizedGemv(n, k, bits, group, 4).gbPerS));
      }
    }
  }
  let prefill = 0;
  let gemm = 0;
  for (let round = 0; round < ROUNDS; round++) {
    prefill = Math.max(prefill, benchQuantizedPrefill(256, 4864, 896, 4, 64, 4).gflops);
    gemm = Math.max(gemm, benchGemm(256, 896, 4864, 4));
  }
  console.log(`read bandwidth (256 MB):                  ${f(bw)} GB/s`);
  for (const [n, k] of shapes) {
    for (const [bits, group] of configs) {
      const key = `${n}x${k} q${bits}/g${group}`;
      const g = gemv.get(key)!;
      const mb = weightBytes(randomQuantizedWeight(n, k, bits, group)) / 1e6;
      const note = mb < 32 ? '  (fits in L3, so it can beat DRAM bandwidth)' : '';
      console.log(`GEMV M=1 ${key} (${f(mb)} MB): ${f(g)} GB/s  (${f(g / bw, 2)} of read bandwidth)${note}`);
    }
  }
  console.log(
    `prefill M=256 4864x896 q4/g64:           ${f(prefill)} GFLOP/s  (${f(prefill / gemm, 2)} of the f32 GEMM, ${f(gemm)} GFLOP/s on that shape)`,
  );
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  main();
}
