// The GPU against the CPU on this machine, in one run: the demo model's prefill and decode with --device
// webgpu against the same chapter model on the CPU (and the engine), and the GPU chapters' kernels (2.3
// quantized matmul, 2.5 flash attention, the reference solutions) against their CPU twins (2.2, 2.4).
//   pnpm --filter @tiny-llm/engine bench:gpu [--json FILE]
// Each figure is the best of a few rounds (the machine may be shared); the ratios are GPU / CPU. On a
// software GPU (Mesa) they say what the WebGPU path costs here, not what a GPU can do.
import { writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import * as tc from '@tiny-llm/tensor-core';
import { bestSeconds } from '@tiny-llm/tensor-core/bench';
import { gpuSeconds } from '@tiny-llm/tensor-core/bench-webgpu';
import { flashAttention, flashAttentionGpu, quantizedMatmul, quantizedMatmulGpu } from '@tiny-llm/reference/week2';
import { measureSpeed } from '../src/bench.ts';
import { closeDevice, deviceBackend, loadModel, type ModelChoice } from '../src/registry.ts';

const DEMO = new URL('../../../models/tiny-qwen2-py', import.meta.url).pathname;

interface ModelRow {
  runs: string;
  prefill_tokens_per_s: number;
  decode_tokens_per_s: number;
}

interface KernelRow {
  kernel: string;
  cpu_s: number;
  gpu_s: number;
  /** cpu_s / gpu_s: above 1, the GPU is faster. */
  gpu_speedup: number;
}

/**
 * The demo model's prefill of `promptLen` tokens and `gen` decode steps, on each device: the CPU runs first,
 * since loading a model on the GPU makes the GPU the process's default backend.
 */
async function models(promptLen: number, gen: number): Promise<ModelRow[]> {
  const runs: [string, ModelChoice][] = [
    ['the engine, cpu', {}],
    ['the reference week 2 model, cpu', { week: 2 }],
    ['the reference week 2 model, webgpu', { device: 'webgpu' }],
  ];
  const rows: ModelRow[] = [];
  for (const [runs_, choice] of runs) {
    const model = await loadModel(DEMO, choice);
    const speed = await measureSpeed(model, promptLen, gen, 2);
    rows.push({ runs: runs_, prefill_tokens_per_s: speed.prefillTokensPerS, decode_tokens_per_s: speed.decodeTokensPerS });
  }
  return rows;
}

/**
 * Each chapter kernel on the CPU and on the GPU, on the same values. The GPU wrappers put their outputs on
 * the GPU of their inputs; the CPU kernels on the default backend, which must then be the CPU.
 */
async function kernels(gpu: tc.WebGPUBackend): Promise<KernelRow[]> {
  tc.setDefaultBackend(tc.cpu);
  const cpu = { device: tc.cpu };
  const onGpu = (t: tc.Tensor) => tc.tensor(t.toArray(), { shape: t.shape, dtype: t.dtype, device: gpu });
  const rows: KernelRow[] = [];
  const compare = async (kernel: string, onCpu: () => tc.Tensor, onDevice: () => tc.Tensor, reps: number) => {
    const cpuS = bestSeconds(() => onCpu().dispose(), reps, 1);
    const gpuS = await gpuSeconds(gpu, onDevice, reps);
    rows.push({ kernel, cpu_s: cpuS, gpu_s: gpuS, gpu_speedup: cpuS / gpuS });
  };

  // Qwen2-0.5B's MLP up projection, 4-bit, groups of 64: a decode step (M = 1) and a prefill chunk (M = 64).
  const [n, k] = [4864, 896];
  const w = tc.quantize(tc.random.normal([n, k], { seed: 1, scale: 0.02, ...cpu }), 4, 64);
  const wGpu = new tc.QuantizedWeight(onGpu(w.weight), onGpu(w.scales), onGpu(w.biases), w.groupSize, w.bits);
  for (const m of [1, 64]) {
    const x = tc.random.normal([m, k], { seed: 2, ...cpu });
    const xGpu = onGpu(x);
    await compare(
      `quantized matmul 4-bit ${n}x${k}, M = ${m} (2.2 vs 2.3)`,
      () => quantizedMatmul(x, w),
      () => quantizedMatmulGpu(xGpu, wGpu),
      m === 1 ? 10 : 3,
    );
  }

  // 14 query heads on 2 kv heads of 64: a causal prefill of 256 tokens, and a decode step over 1024 keys.
  for (const [l, s] of [
    [256, 256],
    [1, 1024],
  ]) {
    const q = tc.random.normal([1, 14, l, 64], { seed: 3, ...cpu });
    const kv = [4, 5].map((seed) => tc.random.normal([1, 2, s, 64], { seed, ...cpu }));
    const [qG, kG, vG] = [q, ...kv].map(onGpu);
    await compare(
      `flash attention L = ${l}, S = ${s}, causal (2.4 vs 2.5)`,
      () => flashAttention(q, kv[0], kv[1], { mask: 'causal' }),
      () => flashAttentionGpu(qG, kG, vG, { mask: 'causal' }),
      3,
    );
  }
  return rows;
}

const { values } = parseArgs({
  options: { json: { type: 'string' }, 'prompt-len': { type: 'string', default: '64' }, gen: { type: 'string', default: '32' } },
});
const [promptLen, gen] = [Number(values['prompt-len']), Number(values.gen)];
const modelRows = await models(promptLen, gen);
const gpu = (await deviceBackend('webgpu')) as tc.WebGPUBackend;
const kernelRows = await kernels(gpu);
closeDevice();

console.log(`adapter: ${gpu.adapterName}\n`);
const f = (x: number, d = 1) => x.toFixed(d);
const [, plain, onGpu] = modelRows;
console.log(`the demo model (models/tiny-qwen2-py), prefill ${promptLen} tokens, decode ${gen}:`);
for (const r of modelRows)
  console.log(
    `  ${r.runs.padEnd(38)} prefill ${f(r.prefill_tokens_per_s).padStart(7)} tok/s   decode ${f(r.decode_tokens_per_s).padStart(7)} tok/s`,
  );
console.log(
  `  webgpu / cpu (the same model):          prefill ${f(onGpu.prefill_tokens_per_s / plain.prefill_tokens_per_s, 3)}x      ` +
    `decode ${f(onGpu.decode_tokens_per_s / plain.decode_tokens_per_s, 3)}x\n`,
);
console.log('the chapter kernels (reference solutions), best of a few rounds:');
for (const r of kernelRows)
  console.log(
    `  ${r.kernel.padEnd(58)} cpu ${f(r.cpu_s * 1e3, 2).padStart(8)} ms   gpu ${f(r.gpu_s * 1e3, 2).padStart(8)} ms   gpu / cpu speed ${f(r.gpu_speedup, 3)}x`,
  );
if (values.json)
  writeFileSync(
    values.json,
    `${JSON.stringify({ adapter: gpu.adapterName, prompt_len: promptLen, gen, models: modelRows, kernels: kernelRows }, null, 2)}\n`,
  );
