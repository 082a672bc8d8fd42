// Timing of the native matmul kernels against their ceilings on this machine.
//
//   cd packages/tensor-core && npx tsx bench/native-kernels.ts
//
// prints the float32 GEMM rate (1024^3), the bf16 GEMV rate at decode shapes (M = 1, a Qwen2-0.5B MLP weight
// and its LM head) in GB/s of weights streamed, and the read bandwidth that GEMV is bounded by, with ratios.
// The exported functions are what bench/index.ts reports; each returns a plain number.
import { pathToFileURL } from 'node:url';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { native } from '../src/native.ts';

const F32 = 0;
const BF16 = 2;

/** Rough compute ceiling of this 2-core Zen3 (docs/architecture.md, "Performance"): float32 GEMM, both cores. */
export const GEMM_CEILING_GFLOPS = 150;

function view(data: Float32Array | Uint16Array | Uint8Array, dtype: number, shape: number[], strides: number[]) {
  return { buffer: data.buffer, byteOffset: data.byteOffset, dtype, shape, strides };
}

function filled(n: number, seed: number): Float32Array {
  const a = new Float32Array(n);
  let s = seed;
  for (let i = 0; i < n; i++) {
    s = (s * 1103515245 + 12345) % 2147483648;
    a[i] = s / 2147483648 - 0.5;
  }
  return a;
}

/** A bench script's flags, parsed strictly: an unknown flag or a missing value prints the usage and exits with 2. */
export function flagsOf<const O extends ParseArgsConfig['options'] & {}>(usage: string, options: O) {
  try {
    return parseArgs({ args: process.argv.slice(2), options }).values;
  } catch (err) {
    console.error(`${(err as Error).message}\nusage: ${usage}`);
    process.exit(2);
  }
}

/**
 * Best time in seconds of `reps` timed calls of fn after `warmup` untimed ones. Best-of, because the machine is
 * shared: interference only ever makes a run slower.
 */
export function bestSeconds(fn: () => void, reps: number, warmup = 2): number {
  for (let i = 0; i < warmup; i++) fn();
  let best = Infinity;
  for (let i = 0; i < reps; i++) {
    const t0 = performance.now();
    fn();
    best = Math.min(best, (performance.now() - t0) / 1e3);
  }
  return best;
}

/** float32 GEMM rate in GFLOP/s: out[M, N] = a[M, K] @ b[K, N], both row-major (default 1024^3). */
export function benchGemm(m = 1024, k = 1024, n = 1024, reps = 10): number {
  const a = filled(m * k, 1);
  const b = filled(k * n, 2);
  const out = new Float32Array(m * n);
  const av = view(a, F32, [m, k], [k, 1]);
  const bv = view(b, F32, [k, n], [n, 1]);
  const ov = view(out, F32, [m, n], [n, 1]);
  const s = bestSeconds(() => native.matmul(av, bv, ov), reps);
  return (2 * m * n * k) / s / 1e9;
}

// The last bf16 weight made, reused by repeated measurements of one shape (a fresh 272 MB array costs a second
// of page faults and filling each time).
let lastWeight: Uint16Array | null = null;
function weight(len: number): Uint16Array {
  if (lastWeight?.length === len) return lastWeight;
  lastWeight = null;
  const w = new Uint16Array(len);
  // Finite bf16 values (1/128 .. 1/64); filling also touches every page before timing (first touch is slow here).
  for (let i = 0; i < len; i++) w[i] = 0x3c00 + (i & 127);
  lastWeight = w;
  return w;
}

/**
 * bf16 GEMV rate in GB/s of weights streamed: out[1, n] = x[1, k] @ W^T, W a bf16 (n, k) row-major weight
 * passed in the transposed (linear layer) layout. Every call reads all n * k * 2 bytes of W.
 */
export function benchGemv(n: number, k: number, reps?: number): number {
  const x = filled(k, 3);
  const w = weight(n * k);
  const out = new Float32Array(n);
  const xv = view(x, F32, [1, k], [k, 1]);
  const wv = view(w, BF16, [k, n], [1, k]);
  const ov = view(out, F32, [1, n], [n, 1]);
  const bytes = n * k * 2;
  // Small weights: time batches of calls so the clock's resolution and the call cost do not dominate.
  const calls = Math.max(1, Math.floor(32e6 / bytes));
  const s = bestSeconds(() => {
    for (let i = 0; i < calls; i++) native.matmul(xv, wv, ov);
  }, reps ?? (bytes > 64e6 ? 8 : 20));
  return (bytes * calls) / s / 1e9;
}

/** Read bandwidth of the whole pool in GB/s over a buffer of `megabytes` (default 256 MB, far beyond L3). */
export function readBandwidthGBs(megabytes = 256, reps = 5): number {
  const buf = new Uint8Array(megabytes * 1024 * 1024);
  buf.fill(1); // fault every page in before timing
  native.readBandwidth(buf, 1); // warm-up
  let best = 0;
  for (let i = 0; i < reps; i++) best = Math.max(best, native.readBandwidth(buf, 2));
  return best;
}

function main(): void {
  const f = (x: number, d = 1) => x.toFixed(d);
  const features = native.cpuFeatures();
  console.log(`tensor-core native kernels: ${native.numThreads()} threads, simd=${features.simd}, f16c=${features.f16c}`);
  // The machine is shared: the ceiling and the kernels are measured in alternating rounds and the best of each
  // kept, so that a burst of someone else's work does not land on one side of a ratio only.
  let bw = 0;
  let gemm = 0;
  const gemv = new Map<string, number>();
  const shapes: [number, number][] = [[4864, 896], [151936, 896]];
  for (let round = 0; round < 3; round++) {
    bw = Math.max(bw, readBandwidthGBs(256, 2));
    gemm = Math.max(gemm, benchGemm(1024, 1024, 1024, 5));
  }
  for (const [n, k] of shapes) {
    for (let round = 0; round < 3; round++) {
      bw = Math.max(bw, readBandwidthGBs(256, 2));
      gemv.set(`${n}x${k}`, Math.max(gemv.get(`${n}x${k}`) ?? 0, benchGemv(n, k, 4)));
    }
  }
  console.log(`read bandwidth (256 MB):           ${f(bw)} GB/s`);
  console.log(`GEMM f32 1024^3:                   ${f(gemm)} GFLOP/s  (${f(gemm / GEMM_CEILING_GFLOPS, 2)} of ~${GEMM_CEILING_GFLOPS})`);
  for (const [n, k] of shapes) {
    const g = gemv.get(`${n}x${k}`)!;
    const mb = (n * k * 2) / 1e6;
    const note = mb < 32 ? '  (fits in L3, so it can beat DRAM bandwidth)' : '';
    console.log(`GEMV bf16 M=1 ${n}x${k} (${f(mb)} MB): ${f(g)} GB/s  (${f(g / bw, 2)} of read bandwidth)${note}`);
  }
}

if (import.meta.url === `file://${process.argv[1]}` || import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  main();
}
