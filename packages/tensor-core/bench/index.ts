// pnpm bench [--json FILE]: the kernels of tensor-core next to the ceilings of this machine, measured in
// the same run (a machine that is busy or throttled lowers both, so the ratio is what to read).
//
//   GEMM 1024^3 float32    vs the FMA peak of all threads (registers only)
//   bf16 GEMV, M = 1       vs the read bandwidth (a native streaming loop over 256 MB)
//   elementwise add        vs the read bandwidth (bytes read + written per second)
//   a call into C++, and a whole small op (add of 4 numbers), in microseconds
import { writeFileSync } from 'node:fs';
import { resolve } from 'node:path';
import * as tc from '../src/index.ts';
import { benchGemm, benchGemv, bestSeconds, flagsOf, readBandwidthGBs } from './native-kernels.ts';

/** The float32 FMA throughput of all threads, best of a few runs. */
function peakGflops(): number {
  return Math.max(...Array.from({ length: 3 }, () => tc.native.peakGflops()));
}

/** add of two 16M-element float32 tensors into a preallocated-by-pool output: 3 x 64 MB moved per call. */
function elementwiseAddGBs(): number {
  const n = 16 * 1024 * 1024;
  const a = tc.random.uniform([n], { seed: 1 });
  const b = tc.random.uniform([n], { seed: 2 });
  // Disposing each result returns its buffer to the pool, as the engine does every step.
  const seconds = bestSeconds(() => tc.add(a, b).dispose(), 8);
  return (3 * n * 4) / seconds / 1e9;
}

function microseconds(fn: () => void, calls: number): number {
  for (let i = 0; i < 1000; i++) fn();
  return (bestSeconds(() => {
    for (let i = 0; i < calls; i++) fn();
  }, 5) * 1e6) / calls;
}

function main(): void {
  const { json } = flagsOf('bench [--json FILE]', { json: { type: 'string' } });
  // pnpm runs this in packages/tensor-core; a relative path means one relative to where pnpm was started.
  const jsonPath = json === undefined ? undefined : resolve(process.env.INIT_CWD ?? process.cwd(), json);

  const small = tc.ones([4]);
  const results: Record<string, number> = {
    threads: tc.native.numThreads(),
    read_bandwidth_gb_s: readBandwidthGBs(),
    fma_peak_gflops: peakGflops(),
    gemm_f32_1024_gflops: benchGemm(),
    gemv_bf16_4864x896_gb_s: benchGemv(4864, 896),
    gemv_bf16_151936x896_gb_s: benchGemv(151936, 896),
    elementwise_add_gb_s: elementwiseAddGBs(),
    napi_call_us: microseconds(() => tc.native.noop(), 100_000),
    small_op_us: microseconds(() => tc.add(small, small).dispose(), 20_000),
  };
  // The ceiling again at the end: on a shared machine it moves, and the ratios use the better of the two.
  results.read_bandwidth_gb_s = Math.max(results.read_bandwidth_gb_s, readBandwidthGBs());
  results.gemm_ratio_to_peak = results.gemm_f32_1024_gflops / results.fma_peak_gflops;
  results.gemv_4864x896_ratio_to_bandwidth = results.gemv_bf16_4864x896_gb_s / results.read_bandwidth_gb_s;
  results.gemv_151936x896_ratio_to_bandwidth = results.gemv_bf16_151936x896_gb_s / results.read_bandwidth_gb_s;
  results.elementwise_add_ratio_to_bandwidth = results.elementwise_add_gb_s / results.read_bandwidth_gb_s;

  const f = (x: number, d = 1) => x.toFixed(d);
  const rows: [string, string, string][] = [
    ['GEMM f32 1024^3', `${f(results.gemm_f32_1024_gflops)} GFLOP/s`, `${f(results.gemm_ratio_to_peak, 2)} of FMA peak ${f(results.fma_peak_gflops)} GFLOP/s`],
    ['GEMV bf16 4864x896', `${f(results.gemv_bf16_4864x896_gb_s)} GB/s`, `${f(results.gemv_4864x896_ratio_to_bandwidth, 2)} of read bandwidth (8.7 MB: partly in cache)`],
    ['GEMV bf16 151936x896', `${f(results.gemv_bf16_151936x896_gb_s)} GB/s`, `${f(results.gemv_151936x896_ratio_to_bandwidth, 2)} of read bandwidth`],
    ['add f32 16M', `${f(results.elementwise_add_gb_s)} GB/s`, `${f(results.elementwise_add_ratio_to_bandwidth, 2)} of read bandwidth`],
    ['read bandwidth', `${f(results.read_bandwidth_gb_s)} GB/s`, 'the ceiling of memory-bound kernels'],
    ['call into C++', `${f(results.napi_call_us, 3)} us`, 'an empty N-API call'],
    ['small op', `${f(results.small_op_us, 2)} us`, 'add of 4 floats: checks, allocation, kernel'],
  ];
  console.log(`tensor-core on ${results.threads} threads\n`);
  for (const [name, value, note] of rows) console.log(`${name.padEnd(24)}${value.padEnd(16)}${note}`);
  if (jsonPath) {
    writeFileSync(jsonPath, JSON.stringify(results, null, 2) + '\n');
    console.log(`\nwrote ${jsonPath}`);
  }
}

main();
