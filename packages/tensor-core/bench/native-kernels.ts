// Timing of the native kernels, for bench/index.ts (and the engine's benchmarks, which import the ceilings).
// Each function measures one kernel at the SIMD level in use and returns a plain number.
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { native } from '../src/native.ts';

const F32 = 0;
const BF16 = 2;

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
  return gemmGflops(m, k, n, view(filled(k * n, 2), F32, [k, n], [n, 1]), reps);
}

/**
 * GEMM rate in GFLOP/s of a prompt through a linear layer: out[m, n] = x[m, k] @ W^T, W a bf16 (n, k) weight in the
 * transposed layout, widened to float32 while packing.
 */
export function benchGemmBf16(m: number, k: number, n: number, reps = 10): number {
  return gemmGflops(m, k, n, view(weight(n * k), BF16, [k, n], [1, k]), reps);
}

function gemmGflops(m: number, k: number, n: number, b: ReturnType<typeof view>, reps: number): number {
  const a = view(filled(m * k, 1), F32, [m, k], [k, 1]);
  const out = view(new Float32Array(m * n), F32, [m, n], [n, 1]);
  const s = bestSeconds(() => native.matmul(a, b, out), reps);
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
 * bf16 GEMV rate in GB/s of weights streamed: out[m, n] = x[m, k] @ W^T, W a bf16 (n, k) row-major weight
 * passed in the transposed (linear layer) layout, m = 1 for a decode step. Every call reads all n * k * 2 bytes
 * of W.
 */
export function benchGemv(n: number, k: number, reps?: number, m = 1): number {
  const x = filled(m * k, 3);
  const w = weight(n * k);
  const out = new Float32Array(m * n);
  const xv = view(x, F32, [m, k], [k, 1]);
  const wv = view(w, BF16, [k, n], [1, k]);
  const ov = view(out, F32, [m, n], [n, 1]);
  const bytes = n * k * 2;
  // Small weights: time batches of calls so the clock's resolution and the call cost do not dominate.
  const calls = Math.max(1, Math.floor(32e6 / bytes));
  const s = bestSeconds(
    () => {
      for (let i = 0; i < calls; i++) native.matmul(xv, wv, ov);
    },
    reps ?? (bytes > 64e6 ? 8 : 20),
  );
  return (bytes * calls) / s / 1e9;
}

/**
 * The matrices of one Qwen2-0.5B decode step in bf16 (24 layers of q, k, v, o, gate, up, down, then the LM head:
 * 988 MB, far beyond the caches), each multiplied once by one row as the engine's step does. Returns GB/s of
 * weights streamed over the whole step: what the GEMV reaches in a model, where every matrix comes cold from
 * memory and small ones pay the start of their stream and of the parallel region.
 */
export function benchDecodeStep(reps = 3): number {
  decodeStep ??= makeDecodeStep();
  const step = decodeStep;
  return step.bytes / bestSeconds(() => step.calls.forEach((call) => call()), reps, 1) / 1e9;
}

let decodeStep: { calls: (() => void)[]; bytes: number } | undefined;
function makeDecodeStep() {
  const [hidden, kv, mlp, vocab] = [896, 128, 4864, 151936];
  const shapes: [number, number][] = [];
  for (let layer = 0; layer < 24; layer++) {
    shapes.push([hidden, hidden], [kv, hidden], [kv, hidden], [hidden, hidden], [mlp, hidden], [mlp, hidden], [hidden, mlp]);
  }
  shapes.push([vocab, hidden]);
  let bytes = 0;
  const calls = shapes.map(([n, k], i) => {
    const w = new Uint16Array(n * k);
    for (let j = 0; j < w.length; j++) w[j] = 0x3c00 + ((i + j) & 127);
    bytes += w.byteLength;
    const x = filled(k, i),
      out = new Float32Array(n);
    const xv = view(x, F32, [1, k], [k, 1]),
      wv = view(w, BF16, [k, n], [1, k]),
      ov = view(out, F32, [1, n], [n, 1]);
    return () => native.matmul(xv, wv, ov);
  });
  return { calls, bytes };
}

/** Read bandwidth of the whole pool in GB/s over a buffer of `megabytes` (default 256 MB, far beyond L3). */
export function readBandwidthGBs(megabytes = 256, reps = 5): number {
  const buf = probeBuffer(megabytes);
  native.readBandwidth(buf, 1); // warm-up
  let best = 0;
  for (let i = 0; i < reps; i++) best = Math.max(best, native.readBandwidth(buf, 2));
  return best;
}

// The last probe buffer, kept for the next measurement (each is sampled many times in a run).
let lastProbe: Uint8Array | null = null;
function probeBuffer(megabytes: number): Uint8Array {
  if (lastProbe?.length !== megabytes * 1024 * 1024) {
    lastProbe = new Uint8Array(megabytes * 1024 * 1024);
    lastProbe.fill(1); // fault every page in before timing
  }
  return lastProbe;
}
