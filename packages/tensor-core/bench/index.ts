// pnpm bench [--json FILE]: the kernels of tensor-core at each SIMD level this CPU has, side by side, next to the
// ceilings of this machine measured in the same run (a machine that is busy or throttled lowers both, so the
// ratio is what to read).
//
//   FMA peak               every thread issuing independent FMAs on registers (per level: 8 or 16 lanes)
//   GEMM                   vs the FMA peak of the same level (and with bf16 products, cpu.setMatmulPrecision)
//   bf16 GEMV, decode      vs the read bandwidth (a native streaming loop over 256 MB)
//   silu, softmax, add     vs the read bandwidth (bytes read + written per second)
//   argmax of the LM head  microseconds per row
//   a call into C++, and a whole small op (add of 4 numbers), in microseconds
//
// The levels are measured in alternating rounds and the best of each kept, so that a burst of someone else's
// work on this shared machine does not land on one level only. TINY_LLM_SIMD set: that level alone.
import { readFileSync, writeFileSync } from 'node:fs';
import { resolve } from 'node:path';
import * as tc from '../src/index.ts';
import type { SimdLevel } from '../src/index.ts';
import { benchDecodeStep, benchGemm, benchGemmBf16, benchGemv, bestSeconds, flagsOf, readBandwidthGBs } from './native-kernels.ts';

const features = tc.cpuFeatures();
const LEVELS: SimdLevel[] = process.env.TINY_LLM_SIMD
  ? [features.level]
  : tc.SIMD_LEVELS.slice(0, tc.SIMD_LEVELS.indexOf(features.best) + 1);
const ROUNDS = 3;

type PerLevel = Partial<Record<SimdLevel, number>>;

/**
 * The best of `measure` (higher is better) at each level over alternating rounds; `beforeRound` (sampling the
 * ceilings) runs at the start of each, so that kernels and ceilings see the same moments of a busy machine.
 */
function perLevel(measure: (level: SimdLevel) => number, beforeRound = () => {}, rounds = ROUNDS): PerLevel {
  const best: PerLevel = {};
  for (let r = 0; r < rounds; r++) {
    beforeRound();
    for (const level of LEVELS) {
      tc.native.setSimdLevel(level);
      best[level] = Math.max(best[level] ?? 0, measure(level));
    }
  }
  tc.native.setSimdLevel(features.level);
  return best;
}

// The scalar kernels are 10-30x slower: fewer timed repetitions keep the run short.
const reps = (level: SimdLevel, simd: number) => (level === 'scalar' ? 1 : simd);

/** GB/s of an op that moves `bytes` (read and written) per call. */
function opGBs(op: () => tc.Tensor, bytes: number, level: SimdLevel): number {
  // Disposing each result returns its buffer to the pool, as the engine does every step.
  return bytes / bestSeconds(() => op().dispose(), reps(level, 8)) / 1e9;
}

/** Rows per second of argmax over one row of LM-head logits (151936), as the greedy step does every token. */
function argmaxRowsPerSecond(logits: tc.Tensor, level: SimdLevel): number {
  const seconds = bestSeconds(
    () => {
      for (let i = 0; i < 100; i++) tc.argmax(logits, -1).dispose();
    },
    reps(level, 5),
  );
  return 100 / seconds;
}

function bf16Products(measure: () => number): number {
  tc.cpu.setMatmulPrecision('bfloat16');
  try {
    return measure();
  } finally {
    tc.cpu.setMatmulPrecision('float32');
  }
}

function microseconds(fn: () => void, calls: number): number {
  for (let i = 0; i < 1000; i++) fn();
  return (
    (bestSeconds(() => {
      for (let i = 0; i < calls; i++) fn();
    }, 5) *
      1e6) /
    calls
  );
}

function cpuModel(): string {
  try {
    return /^model name\s*:\s*(.*)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1] ?? 'unknown CPU';
  } catch {
    return 'unknown CPU';
  }
}

function main(): void {
  const { json } = flagsOf('bench [--json FILE]', { json: { type: 'string' } });
  // pnpm runs this in packages/tensor-core; a relative path means one relative to where pnpm was started.
  const jsonPath = json === undefined ? undefined : resolve(process.env.INIT_CWD ?? process.cwd(), json);

  const n = 1 << 24;
  const [a, b] = [1, 2].map((seed) => tc.random.uniform([n], { seed, low: -4, high: 4 }));
  const scores = tc.reshape(a, [4096, 4096]);
  const logits = tc.random.normal([1, 151936], { seed: 3 });

  // The ceilings are sampled in every round of the kernels they judge, the best kept: on a shared machine they
  // move with the neighbours' work as the kernels do.
  let bandwidth = 0;
  const peak: PerLevel = {};
  const sampleBandwidth = () => {
    bandwidth = Math.max(bandwidth, readBandwidthGBs(256, 2));
  };
  const samplePeak = () => {
    for (const [level, gflops] of Object.entries(perLevel(() => tc.native.peakGflops(), undefined, 1)))
      peak[level as SimdLevel] = Math.max(peak[level as SimdLevel] ?? 0, gflops);
  };
  const gemm = {
    gemm_f32_1024_gflops: perLevel((l) => benchGemm(1024, 1024, 1024, reps(l, 5)), samplePeak),
    // A prompt of 512 tokens through a Qwen2-0.5B MLP weight (bf16, weight layout): converted while packing.
    gemm_bf16_512x896x4864_gflops: perLevel((l) => benchGemmBf16(512, 896, 4864, reps(l, 5)), samplePeak),
    // The same with cpu.setMatmulPrecision('bfloat16'): vdpbf16ps, where the CPU has it.
    gemm_bf16_products_512x896x4864_gflops: perLevel(
      (l) => (l === 'avx512' && features.avx512bf16 ? bf16Products(() => benchGemmBf16(512, 896, 4864, 5)) : 0),
      samplePeak,
    ),
  };
  const gemv = {
    gemv_bf16_4864x896_gb_s: perLevel((l) => benchGemv(4864, 896, reps(l, 20)), sampleBandwidth),
    gemv_bf16_151936x896_gb_s: perLevel((l) => benchGemv(151936, 896, reps(l, 8)), sampleBandwidth),
    decode_step_bf16_gb_s: perLevel((l) => benchDecodeStep(reps(l, 3)), sampleBandwidth),
    // Batched decode (8 rows): 16 FLOPs per weight, so this one is compute-bound.
    gemv_bf16_8x4864x896_gflops: perLevel((l) => (benchGemv(4864, 896, reps(l, 20), 8) / 2) * 16, samplePeak),
  };
  const ops = {
    silu_f32_16m_gb_s: perLevel((l) => opGBs(() => tc.silu(a), 2 * n * 4, l), sampleBandwidth),
    // Attention scores over a context of 4096 tokens.
    softmax_f32_4096x4096_gb_s: perLevel((l) => opGBs(() => tc.softmax(scores, -1), 2 * n * 4, l), sampleBandwidth),
    argmax_151936_rows_per_s: perLevel((l) => argmaxRowsPerSecond(logits, l)),
  };
  const kernels = { ...gemm, ...gemv, ...ops };
  // The same code at every level (the compiler's vectorisation of a plain loop).
  sampleBandwidth();
  const addGBs = opGBs(() => tc.add(a, b), 3 * n * 4, features.level);
  const small = tc.ones([4]);
  const napiCallUs = microseconds(() => tc.native.noop(), 100_000);
  const smallOpUs = microseconds(() => tc.add(small, small).dispose(), 20_000);

  const f = (x: number | undefined, d = 1) => (x === undefined ? '-' : x.toFixed(d));
  const cells = (values: PerLevel, ceiling: PerLevel | number, d = 1) =>
    LEVELS.map((l) => {
      const c = typeof ceiling === 'number' ? ceiling : ceiling[l];
      if (!values[l]) return '-';
      return c ? `${f(values[l], d)} (${f(values[l]! / c, 2)})` : f(values[l], d);
    });
  const rows: [string, string[], string][] = [
    ['FMA peak GFLOP/s', cells(peak, 0, 0), 'the ceiling of the GEMMs, per level'],
    ['GEMM f32 1024^3 GFLOP/s', cells(kernels.gemm_f32_1024_gflops, peak), '(of the FMA peak)'],
    ['GEMM bf16 W 512x896x4864', cells(kernels.gemm_bf16_512x896x4864_gflops, peak), 'GFLOP/s (of the FMA peak)'],
    ['  with bf16 products', cells(kernels.gemm_bf16_products_512x896x4864_gflops, peak), 'GFLOP/s, precision bfloat16 (opt-in)'],
    ['GEMV bf16 4864x896 GB/s', cells(kernels.gemv_bf16_4864x896_gb_s, bandwidth), '(of read bandwidth; 8.7 MB: partly in cache)'],
    ['GEMV bf16 151936x896 GB/s', cells(kernels.gemv_bf16_151936x896_gb_s, bandwidth), '(of read bandwidth)'],
    ['decode step bf16 GB/s', cells(kernels.decode_step_bf16_gb_s, bandwidth), '(of read bandwidth) Qwen2-0.5B, 988 MB'],
    ['GEMV bf16 M=8 GFLOP/s', cells(kernels.gemv_bf16_8x4864x896_gflops, peak), '(of the FMA peak) 4864x896'],
    ['silu f32 16M GB/s', cells(kernels.silu_f32_16m_gb_s, bandwidth), '(of read bandwidth)'],
    ['softmax 4096x4096 GB/s', cells(kernels.softmax_f32_4096x4096_gb_s, bandwidth), '(of read bandwidth)'],
    ['argmax 151936 rows/s', cells(kernels.argmax_151936_rows_per_s, 0, 0), 'the greedy step over the LM head'],
  ];
  console.log(`tensor-core on ${tc.native.numThreads()} threads of an ${cpuModel()}, best SIMD level ${features.best}\n`);
  console.log(`${'kernel'.padEnd(28)}${LEVELS.map((l) => l.padEnd(16)).join('')}`);
  for (const [name, values, note] of rows) console.log(`${name.padEnd(28)}${values.map((v) => v.padEnd(16)).join('')}${note}`);
  console.log('');
  console.log(`${'add f32 16M'.padEnd(28)}${`${f(addGBs)} GB/s (${f(addGBs / bandwidth, 2)})`.padEnd(24)}of read bandwidth`);
  console.log(`${'read bandwidth'.padEnd(28)}${`${f(bandwidth)} GB/s`.padEnd(24)}the ceiling of memory-bound kernels`);
  console.log(`${'call into C++'.padEnd(28)}${`${f(napiCallUs, 3)} us`.padEnd(24)}an empty N-API call`);
  console.log(`${'small op'.padEnd(28)}${`${f(smallOpUs, 2)} us`.padEnd(24)}add of 4 floats: checks, allocation, kernel`);
  if (jsonPath) {
    const results = {
      cpu: cpuModel(),
      threads: tc.native.numThreads(),
      levels: LEVELS,
      read_bandwidth_gb_s: bandwidth,
      fma_peak_gflops: peak,
      ...kernels,
      elementwise_add_gb_s: addGBs,
      napi_call_us: napiCallUs,
      small_op_us: smallOpUs,
    };
    writeFileSync(jsonPath, `${JSON.stringify(results, null, 2)}\n`);
    console.log(`\nwrote ${jsonPath}`);
  }
}

main();
