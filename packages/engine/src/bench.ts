// `tiny-llm bench`: how fast the engine prefills and decodes, next to what this machine could do at best,
// measured in the same run.
//
// Decode is memory-bound: each token reads every weight once (the experts a token is not routed to excepted),
// so tokens/s <= read bandwidth / bytes read per token. Prefill is compute-bound: a prompt token costs about
// 2 FLOPs per parameter it meets, so tokens/s <= GEMM rate / FLOPs per token. The ratios say how close the
// engine gets (1.0 = at the ceiling).
//
// Ceilings: the read bandwidth (readBandwidthGBs: a 256 MB buffer, far beyond the caches), the float32 GEMM
// rate of the native kernel at 1024^3 (benchGemm), and the FMA peak of the cores (native.peakGflops). They are
// measured after the model runs, so that the peak resident memory reported is the engine's alone. With
// --device webgpu, the GPU's own: a plain WGSL read kernel's bandwidth and the tiled f32 matmul rate at 512^3
// (tensor-core's bench/webgpu-kernels.ts); a GPU has no FMA peak measured here.
import { writeFileSync } from 'node:fs';
import * as tc from '@tiny-llm/tensor-core';
import type { ModelConfig } from '@tiny-llm/tensor-core';
import { benchGemm, readBandwidthGBs } from '@tiny-llm/tensor-core/bench';
import { matmulGflops, readBandwidthGBs as gpuReadBandwidthGBs } from '@tiny-llm/tensor-core/bench-webgpu';
import { Scheduler } from '@tiny-llm/reference/week2';
import { PagedScheduler } from '@tiny-llm/reference/week3';
import { EngineBatchModel } from './batch-model.ts';
import { Qwen2Model } from './model/qwen2.ts';
import { oneLine, UsageError, UserError } from './errors.ts';
import type { BenchFlags } from './cli.ts';
import { checkModelDir, deviceBackend, type ModelChoice } from './registry.ts';
import { EngineQwen2, type EngineModel } from './session.ts';
import { progressBar } from './progress.ts';
import { RandomWeights } from './random-weights.ts';
import { TensorParallelBatchModel, TensorParallelModel } from './tensor-parallel/parallel-model.ts';

/** One weight as the accounting sees it (a quantized one with its scales and biases). */
export interface WeightEntry {
  name: string;
  /** Logical elements (dequantized). */
  params: number;
  /** Bytes in memory. */
  bytes: number;
  /** A matrix that multiplies activations (2-D), as opposed to norms and biases. */
  matrix: boolean;
}

export interface WeightTraffic {
  /** Every parameter of the model. */
  params: number;
  /** Bytes of every weight. */
  weightBytes: number;
  /** Bytes one decode step reads: every matrix but the embedding table (one row), experts scaled by k / E. */
  bytesPerToken: number;
  /** Matrix parameters a token meets in the layers (experts scaled by k / E), not counting the output head. */
  layerMatmulParams: number;
  /** Parameters of the output head (the embedding when tied). */
  headParams: number;
}

const EXPERT = /\.mlp\.experts\.\d+\./;

/** Sums what a token reads and computes, from the list of weights. */
export function weightTraffic(entries: readonly WeightEntry[], config: ModelConfig): WeightTraffic {
  const expertShare = config.moe ? config.moe.numExpertsPerTok / config.moe.numExperts : 1;
  const t: WeightTraffic = { params: 0, weightBytes: 0, bytesPerToken: 0, layerMatmulParams: 0, headParams: 0 };
  for (const e of entries) {
    t.params += e.params;
    t.weightBytes += e.bytes;
    if (e.name === 'model.embed_tokens.weight') {
      if (config.tieWordEmbeddings) {
        t.bytesPerToken += e.bytes; // the tied head reads all of it
        t.headParams += e.params;
      } else {
        t.bytesPerToken += e.bytes / config.vocabSize; // one row looked up
      }
    } else if (e.name === 'lm_head.weight') {
      t.bytesPerToken += e.bytes;
      t.headParams += e.params;
    } else {
      const share = EXPERT.test(e.name) ? expertShare : 1;
      t.bytesPerToken += e.bytes * share;
      if (e.matrix) t.layerMatmulParams += e.params * share;
    }
  }
  return t;
}

/**
 * FLOPs per prompt token of a prefill of L tokens, as the engine runs it: 2 per layer parameter, the output
 * head once per prompt (only the last position's logits are computed), and causal attention (QK^T and PV,
 * 2 FLOPs each per head dim, over (L + 1) / 2 keys on average).
 */
export function prefillFlopsPerToken(t: WeightTraffic, config: ModelConfig, l: number): number {
  const attention = 4 * config.numAttentionHeads * config.headDim * ((l + 1) / 2) * config.numHiddenLayers;
  return 2 * t.layerMatmulParams + (2 * t.headParams) / l + attention;
}

const product = (shape: readonly number[]) => shape.reduce((a, b) => a * b, 1);

/** The weights of a model directory, from the safetensors headers. */
export function modelDirEntries(dir: string): { config: ModelConfig; entries: WeightEntry[] } {
  const md = tc.openModelDir(dir);
  const entries: WeightEntry[] = [];
  for (const name of md.names) {
    const prefix = name.replace(/\.(weight|scales|biases)$/, '');
    const quantized = prefix !== name && md.isQuantized(prefix);
    if (quantized && !name.endsWith('.weight')) continue; // counted with their weight
    const info = md.checkpoint.info(name);
    if (quantized) {
      const qw = md.quantizedWeight(prefix);
      const bytes = info.byteLength + md.checkpoint.info(`${prefix}.scales`).byteLength + md.checkpoint.info(`${prefix}.biases`).byteLength;
      entries.push({ name, params: product(qw.shape), bytes, matrix: true });
    } else {
      entries.push({ name, params: product(info.shape), bytes: info.byteLength, matrix: info.shape.length === 2 });
    }
  }
  return { config: md.config, entries };
}

export function randomEntries(weights: RandomWeights): WeightEntry[] {
  return [...weights.shapes].map(([name, ws]) => ({
    name,
    params: product(ws.shape),
    bytes: weights.bytesOf(name),
    matrix: ws.role === 'matrix',
  }));
}

export interface Ceilings {
  bandwidthGBs: number;
  gemmGflops: number;
  /** The GEMM's n (n x n times n x n). */
  gemmSize: number;
  fmaPeakGflops: number;
}

/**
 * The best of three rounds, bandwidth and GEMM alternating: on a shared machine one burst of a neighbour's work
 * can halve a reading, and a ceiling read low inflates every ratio (one round alone once put bf16 decode at 1.10
 * of the read bandwidth).
 */
export function measureCeilings(): Ceilings {
  let bandwidthGBs = 0;
  let gemmGflops = 0;
  for (let round = 0; round < 3; round++) {
    bandwidthGBs = Math.max(bandwidthGBs, readBandwidthGBs(256, 3));
    gemmGflops = Math.max(gemmGflops, benchGemm(1024, 1024, 1024, 5));
  }
  const fmaPeakGflops = Number(tc.native.peakGflops());
  return { bandwidthGBs, gemmGflops, gemmSize: 1024, fmaPeakGflops };
}

/**
 * The same ceilings on a GPU: the read bandwidth over up to 256 MB (one binding's limit) and the f32 matmul
 * rate at 512^3 (a software GPU takes seconds per 1024^3 product).
 */
export async function measureGpuCeilings(gpu: tc.WebGPUBackend): Promise<Ceilings> {
  const megabytes = Math.min(256, gpu.limits.maxStorageBufferBindingSize / 2 ** 20);
  const bandwidthGBs = await gpuReadBandwidthGBs(gpu, megabytes);
  return { bandwidthGBs, gemmGflops: await matmulGflops(gpu, 512), gemmSize: 512, fmaPeakGflops: 0 };
}

export interface SpeedResult {
  prefillSeconds: number;
  prefillTokensPerS: number;
  decodeSeconds: number;
  decodeTokensPerS: number;
}

/** Deterministic prompt ids in [0, vocab). */
function promptIds(n: number, vocab: number, seed: number): number[] {
  const g = new tc.random.Generator(seed + 1);
  return Array.from({ length: n }, () => g.nextUint32() % vocab);
}

/**
 * A scheduler for `batch` requests of up to `tokens` tokens each: the engine's on a page pool with room for all
 * of them, or the tensor-parallel group's (whose ranks keep a cache per request).
 */
function batchScheduler(model: EngineQwen2 | TensorParallelModel, batch: number, tokens: number): Scheduler<unknown> {
  if (model instanceof TensorParallelModel) return new Scheduler(new TensorParallelBatchModel(model.group), { maxBatch: batch });
  const numPages = batch * Math.ceil(tokens / 16);
  return new PagedScheduler(new EngineBatchModel(model.model, { numPages }), { maxBatch: batch });
}

/**
 * Aggregate decode throughput of `batch` requests decoding together through the scheduler (chapters 2.6 and 3.1,
 * on the engine's model and a page pool with room for all of them), beside the prefill rate it is judged against:
 * the requests are prefilled first (one per step), then `steps` steps of pure decode, each giving every request a
 * token, are timed in rounds, each round after the prefill of a prompt of the same length in a session of its
 * own. Both rates are totals over the same rounds: on a shared machine a neighbour's burst then slows both, where
 * a prefill timed apart from the batch (once put the ratio at 0.63 and the next run at 0.31) moves it alone.
 * Batching turns decode's matrix-vector products into matrix products, so its ceiling is the prefill rate.
 */
export async function measureBatchDecode(
  model: EngineQwen2 | TensorParallelModel,
  batch: number,
  promptLen: number,
  steps: number,
  seed = 0,
): Promise<{ tokensPerS: number; seconds: number; prefillTokensPerS: number }> {
  const maxTokens = steps + batch + 2;
  const scheduler = batchScheduler(model, batch, promptLen + maxTokens);
  const ids = Array.from({ length: batch }, (_, i) =>
    scheduler.submit({ promptIds: promptIds(promptLen, model.config.vocabSize, seed + i), maxTokens }),
  );
  // After `batch` steps every request is prefilled; the next step is the first where all of them decode.
  for (let i = 0; i <= batch; i++) await scheduler.step();
  const prompt = promptIds(promptLen, model.config.vocabSize, seed + batch);
  const rounds = Math.min(BATCH_ROUNDS, steps);
  let [seconds, prefillSeconds, tokens] = [0, 0, 0];
  for (let r = 0; r < rounds; r++) {
    prefillSeconds += await timePrefill(model, prompt);
    const t0 = performance.now();
    for (let i = Math.floor((steps * r) / rounds); i < Math.floor((steps * (r + 1)) / rounds); i++)
      tokens += (await scheduler.step()).filter((o) => o.token !== null).length;
    seconds += (performance.now() - t0) / 1e3;
  }
  for (const id of ids) scheduler.cancel(id);
  if (scheduler instanceof PagedScheduler) scheduler.model.pool.dispose();
  return { tokensPerS: tokens / seconds, seconds, prefillTokensPerS: (rounds * promptLen) / prefillSeconds };
}

/** The rounds measureBatchDecode splits its steps into, each after a prefill. */
const BATCH_ROUNDS = 8;

/** The greedy token of logits [1, V], read back as generation reads it (on a GPU, the read waits for the kernels). */
async function readToken(logits: tc.Tensor): Promise<number> {
  const t = tc.argmax(logits, -1);
  const id = (await t.data())[0];
  t.dispose();
  logits.dispose();
  return id;
}

/** Seconds to prefill `ids` in a fresh session, up to its first token. */
async function timePrefill(model: EngineModel, ids: readonly number[]): Promise<number> {
  const session = model.newSession();
  const t0 = performance.now();
  await readToken(session.feed(ids));
  const seconds = (performance.now() - t0) / 1e3;
  session.dispose();
  return seconds;
}

/** What one all-reduce of a group costs, for a float32 partial [rows, width]. */
export interface AllReduceTiming {
  rows: number;
  width: number;
  microseconds: number;
}

/**
 * The time of one all-reduce over a tensor-parallel group, for partials of each row count: the mean of many in a
 * row (the group does nothing else meanwhile), the best of three such runs.
 */
export function measureAllReduce(model: TensorParallelModel, rowCounts: readonly number[]): AllReduceTiming[] {
  return rowCounts.map((rows) => {
    const rounds = Math.max(20, Math.round(2000 / rows));
    const seconds = Math.min(...[0, 1, 2].map(() => model.group.timeAllReduce(rows, rounds)));
    return { rows, width: model.config.hiddenSize, microseconds: seconds * 1e6 };
  });
}

/**
 * Prefill promptLen tokens, then decode gen tokens greedily, in a fresh session; `reps` times, keeping the
 * best of each (the machine is shared: interference only ever makes a run slower). First an untimed warm-up of
 * a short prompt and gen decode steps: it faults in the memory-mapped weights, and lets V8 compile the decode
 * step's JavaScript to optimized code, which it does only after some hundred steps (a fresh process decoded the
 * demo model's first 64 tokens at 1.8-1.9 ms a step, steps 128-191 at 0.9 ms).
 */
export async function measureSpeed(model: EngineModel, promptLen: number, gen: number, reps: number, seed = 0): Promise<SpeedResult> {
  const ids = promptIds(promptLen, model.config.vocabSize, seed);
  {
    const warm = model.newSession();
    let next = await readToken(warm.feed(ids.slice(0, Math.min(8, ids.length))));
    for (let i = 0; i < gen; i++) next = await readToken(warm.feed([next]));
    warm.dispose();
  }
  let prefillSeconds = Infinity;
  let decodeSeconds = Infinity;
  for (let r = 0; r < reps; r++) {
    const session = model.newSession();
    const t0 = performance.now();
    let next = await readToken(session.feed(ids));
    const t1 = performance.now();
    for (let i = 0; i < gen; i++) next = await readToken(session.feed([next]));
    const t2 = performance.now();
    session.dispose();
    prefillSeconds = Math.min(prefillSeconds, (t1 - t0) / 1e3);
    decodeSeconds = Math.min(decodeSeconds, (t2 - t1) / 1e3);
  }
  return { prefillSeconds, prefillTokensPerS: promptLen / prefillSeconds, decodeSeconds, decodeTokensPerS: gen / decodeSeconds };
}

/** Peak resident memory of this process so far, in MB. */
export function peakRssMB(): number {
  return process.resourceUsage().maxRSS / 1024;
}

export interface BenchHelpers {
  resolveInput(path: string): string;
  resolveOutput(path: string): string;
  displayPath(path: string): string;
  loadWithProgress(dir: string, choice: ModelChoice): Promise<EngineModel>;
}

export interface BenchReport {
  source: 'model' | 'config';
  model: string;
  model_type: string;
  /** f32, bf16, f16, q4, q8... (the checkpoint's, or --dtype's). */
  dtype: string;
  /** The quantization group size (null for unquantized weights). */
  group_size: number | null;
  /** What ran: "the engine", "the learner's week 1 model", ... */
  runs: string;
  /** What the quantized matmuls multiply: "int16" activations (the engine's default), or "float32" (--exact, the chapter models, float weights). */
  activations: 'int16' | 'float32';
  /** Where it ran: "cpu", or "webgpu (the adapter)"; the ceilings are that device's. */
  device: string;
  params: number;
  weight_bytes: number;
  /** Bytes of tensors the loaded model allocated (weights widened to float32 at load count here; mapped ones do not). */
  model_tensor_bytes: number;
  weight_bytes_per_token: number;
  prompt_len: number;
  gen: number;
  load_seconds: number;
  prefill_seconds: number;
  prefill_tokens_per_s: number;
  prefill_flops_per_token: number;
  prefill_gflops: number;
  decode_seconds: number;
  decode_tokens_per_s: number;
  decode_gb_s: number;
  decode_ceiling_tokens_per_s: number;
  bandwidth_gb_s: number;
  gemm_gflops: number;
  /** n of the n^3 GEMM that measured gemm_gflops. */
  gemm_size: number;
  fma_peak_gflops: number;
  decode_ratio: number;
  prefill_ratio: number;
  prefill_ratio_fma_peak: number;
  peak_rss_mb: number;
  /**
   * With --batch N: the aggregate decode rate of N requests decoding together, the prefill rate measured between
   * its steps (see measureBatchDecode), and the ratio of the two.
   */
  batch: number | null;
  batch_decode_tokens_per_s: number | null;
  batch_prefill_tokens_per_s: number | null;
  batch_decode_ratio_to_prefill: number | null;
  /** Ranks the model is split over (chapter 3.6); with more than one, what an all-reduce costs... */
  tensor_parallel: number;
  all_reduce: AllReduceTiming[] | null;
  /** ...and the milliseconds of a decoded token that its 2 x layers all-reduces take. */
  all_reduce_ms_per_token: number | null;
  threads: number;
  date: string;
}

/** The dtype of a checkpoint, for the report: its quantization, else its matrices' dtype. */
function checkpointDtype(config: ModelConfig, entries: WeightEntry[], dir: string): string {
  if (config.quantization) return `q${config.quantization.bits}`;
  try {
    const md = tc.openModelDir(dir);
    const counts = new Map<string, number>();
    for (const e of entries) {
      if (!e.matrix) continue;
      const dt = md.checkpoint.info(e.name).dtype;
      counts.set(dt, (counts.get(dt) ?? 0) + e.bytes);
    }
    const top = [...counts].sort((a, b) => b[1] - a[1])[0];
    return top ? (({ float32: 'f32', bfloat16: 'bf16', float16: 'f16' } as Record<string, string>)[top[0]] ?? top[0]) : '?';
  } catch {
    return config.dtype ?? '?';
  }
}

export async function runBench(flags: BenchFlags, h: BenchHelpers): Promise<BenchReport> {
  const choice: ModelChoice = {
    solution: flags.solution,
    week: flags.week,
    device: flags.device,
    tensorParallel: flags['tensor-parallel'],
    exact: flags.exact,
  };
  const ranks = choice.tensorParallel ?? 1;
  // 256-token prompts, as the prefill target is stated; 128 decoded tokens, as llama.cpp's llama-bench (tg128), the
  // peer. With 32, the figure was mostly the first steps after the prefill, which run slower (0.66 against 0.51
  // of the ceiling for the demo model, in consecutive runs).
  const promptLen = flags['prompt-len'] ?? 256;
  const gen = flags.gen ?? 128;
  const reps = flags.reps ?? 2;
  const seed = flags.seed ?? 0;
  if (flags.config !== undefined && flags.model !== undefined)
    throw new UsageError('bench: give --model DIR or --config CONFIG.json, not both');
  if (flags.dtype !== undefined && flags.config === undefined) {
    throw new UsageError("bench: --dtype picks the dtype of --config's random weights; a --model runs in its checkpoint's dtype");
  }

  let model: EngineModel;
  let traffic: WeightTraffic;
  let label: string;
  let dtype: string;
  let groupSize: number | null;
  let loadSeconds: number;
  let config: ModelConfig;
  const bytesBefore = tc.cpu.memory().liveBytes;
  if (flags.config !== undefined) {
    if (choice.solution !== undefined || choice.week !== undefined || (choice.device ?? 'cpu') !== 'cpu') {
      throw new UsageError(
        'bench: --config builds random weights for the engine on the CPU; a chapter model (--solution, --week, --device webgpu) runs with --model DIR',
      );
    }
    const path = h.resolveInput(flags.config);
    try {
      config = tc.readModelConfig(path);
    } catch (err) {
      const why = (err as NodeJS.ErrnoException).code === 'ENOENT' ? `${path}: no such file` : oneLine(err);
      throw new UserError(`--config: ${why}`);
    }
    const randomDtype = flags.dtype ?? 'bf16';
    dtype = randomDtype;
    const weights = new RandomWeights(config, { dtype: randomDtype, seed });
    const bar = progressBar(`random ${dtype} weights`);
    weights.onProgress = (done, total) => bar.update(done, total);
    const t0 = performance.now();
    try {
      model =
        ranks > 1
          ? await TensorParallelModel.start(
              { weights: { config, dtype: randomDtype, seed }, code: 'engine', worldSize: ranks, exact: choice.exact },
              `the engine on ${ranks} tensor-parallel ranks`,
            )
          : new EngineQwen2(Qwen2Model.fromWeights(config, weights.get, { exact: choice.exact }));
    } catch (err) {
      throw new UserError(`--config ${h.displayPath(path)}: cannot build the model: ${oneLine(err)}`, { cause: err });
    } finally {
      bar.done();
    }
    loadSeconds = (performance.now() - t0) / 1e3;
    process.stderr.write(`built random ${dtype} weights of ${h.displayPath(path)} in ${loadSeconds.toFixed(2)} s\n`);
    traffic = weightTraffic(randomEntries(weights), config);
    label = h.displayPath(path);
    groupSize = weights.bits !== null ? weights.groupSize : null;
  } else {
    const dir = h.resolveInput(flags.model ?? 'models/tiny-qwen2-py');
    checkModelDir(dir);
    const t0 = performance.now();
    model = await h.loadWithProgress(dir, choice);
    loadSeconds = (performance.now() - t0) / 1e3;
    config = model.config;
    const { entries } = modelDirEntries(dir);
    traffic = weightTraffic(entries, config);
    label = h.displayPath(dir);
    dtype = checkpointDtype(config, entries, dir);
    groupSize = config.quantization?.groupSize ?? null;
  }
  if (promptLen + gen > config.maxPositionEmbeddings) {
    throw new UserError(`--prompt-len ${promptLen} + --gen ${gen} exceed the model's context of ${config.maxPositionEmbeddings} tokens`);
  }

  const batch = flags.batch;
  // Batches run through the engine's scheduler: its own model, or its tensor-parallel group.
  const batchModel = model instanceof EngineQwen2 || model instanceof TensorParallelModel ? model : null;
  if (batch !== undefined && batchModel === null) {
    throw new UsageError('bench: --batch measures the engine on the CPU (leave out --solution, --week and --device)');
  }
  process.stderr.write(`measuring: prefill ${promptLen} tokens, decode ${gen} tokens, best of ${reps}...\n`);
  const speed = await measureSpeed(model, promptLen, gen, reps, seed);
  let batched: { tokensPerS: number; prefillTokensPerS: number } | null = null;
  if (batch !== undefined && batchModel !== null) {
    process.stderr.write(`measuring: decode at batch ${batch} (${gen} steps after ${batch} prefills of ${promptLen} tokens)...\n`);
    batched = await measureBatchDecode(batchModel, batch, promptLen, gen, seed);
  }
  let allReduce: AllReduceTiming[] | null = null;
  if (model instanceof TensorParallelModel) {
    process.stderr.write(
      `measuring: one all-reduce over ${ranks} ranks, of [1, ${config.hiddenSize}] and [${promptLen}, ${config.hiddenSize}] float32...\n`,
    );
    allReduce = measureAllReduce(model, [1, promptLen]);
  }
  const rss = peakRssMB();
  const backend = await deviceBackend(choice.device);
  process.stderr.write(
    `measuring the ceilings of ${model.device} (read bandwidth, ${backend === tc.cpu ? 'GEMM, FMA peak' : 'matmul'})...\n`,
  );
  const ceilings = backend instanceof tc.WebGPUBackend ? await measureGpuCeilings(backend) : measureCeilings();

  const modelTensorBytes = tc.cpu.memory().liveBytes - bytesBefore;
  const flopsPerToken = prefillFlopsPerToken(traffic, config, promptLen);
  const prefillGflops = (speed.prefillTokensPerS * flopsPerToken) / 1e9;
  const decodeGBs = (speed.decodeTokensPerS * traffic.bytesPerToken) / 1e9;
  const report: BenchReport = {
    source: flags.config !== undefined ? 'config' : 'model',
    model: label,
    model_type: config.modelType,
    dtype,
    group_size: groupSize,
    activations: model instanceof EngineQwen2 && groupSize !== null && !choice.exact ? 'int16' : 'float32',
    runs: model.description,
    device: model.device,
    params: traffic.params,
    weight_bytes: traffic.weightBytes,
    model_tensor_bytes: modelTensorBytes,
    weight_bytes_per_token: Math.round(traffic.bytesPerToken),
    prompt_len: promptLen,
    gen,
    load_seconds: loadSeconds,
    prefill_seconds: speed.prefillSeconds,
    prefill_tokens_per_s: speed.prefillTokensPerS,
    prefill_flops_per_token: flopsPerToken,
    prefill_gflops: prefillGflops,
    decode_seconds: speed.decodeSeconds,
    decode_tokens_per_s: speed.decodeTokensPerS,
    decode_gb_s: decodeGBs,
    decode_ceiling_tokens_per_s: (ceilings.bandwidthGBs * 1e9) / traffic.bytesPerToken,
    bandwidth_gb_s: ceilings.bandwidthGBs,
    gemm_gflops: ceilings.gemmGflops,
    gemm_size: ceilings.gemmSize,
    fma_peak_gflops: ceilings.fmaPeakGflops,
    decode_ratio: decodeGBs / ceilings.bandwidthGBs,
    prefill_ratio: prefillGflops / ceilings.gemmGflops,
    prefill_ratio_fma_peak: ceilings.fmaPeakGflops > 0 ? prefillGflops / ceilings.fmaPeakGflops : 0,
    peak_rss_mb: rss,
    batch: batch ?? null,
    batch_decode_tokens_per_s: batched?.tokensPerS ?? null,
    batch_prefill_tokens_per_s: batched?.prefillTokensPerS ?? null,
    batch_decode_ratio_to_prefill: batched ? batched.tokensPerS / batched.prefillTokensPerS : null,
    tensor_parallel: ranks,
    all_reduce: allReduce,
    all_reduce_ms_per_token: allReduce ? (2 * config.numHiddenLayers * allReduce[0].microseconds) / 1e3 : null,
    threads: Number(tc.native.numThreads()),
    date: new Date().toISOString(),
  };
  process.stdout.write(`${formatReport(report)}\n`);
  if (flags.json !== undefined) {
    const out = h.resolveOutput(flags.json);
    try {
      writeFileSync(out, `${JSON.stringify(report, null, 2)}\n`);
    } catch (err) {
      throw new UserError(`--json ${out}: cannot write it (${oneLine(err)})`);
    }
    process.stderr.write(`wrote ${h.displayPath(out)}\n`);
  }
  return report;
}

export function formatReport(r: BenchReport): string {
  const f = (x: number, d = 1) => x.toFixed(d);
  const mb = (bytes: number) => `${f(bytes / 1e6, 1)} MB`;
  return [
    `bench ${r.model} (${r.model_type}, ${r.dtype}${r.group_size ? ` group ${r.group_size}, ${r.activations} activations` : ''}; ${r.runs}, on ${r.device}): ` +
      `${f(r.params / 1e6, 1)}M params, ${mb(r.weight_bytes)} of weights, ${mb(r.weight_bytes_per_token)} read per decoded token`,
    `  ceilings (measured now, ${r.device === 'cpu' ? `${r.threads} threads` : 'on the GPU'}): read bandwidth ${f(r.bandwidth_gb_s)} GB/s, ` +
      `GEMM f32 ${r.gemm_size}^3 ${f(r.gemm_gflops)} GFLOP/s${r.fma_peak_gflops > 0 ? `, FMA peak ${f(r.fma_peak_gflops)} GFLOP/s` : ''}`,
    `  prefill ${r.prompt_len} tokens: ${f(r.prefill_tokens_per_s)} tok/s (${f(r.prefill_seconds, 3)} s) = ` +
      `${f(r.prefill_gflops)} GFLOP/s at ${f(r.prefill_flops_per_token / 1e6)} MFLOP/token: ` +
      `${f(r.prefill_ratio, 2)} of GEMM${r.fma_peak_gflops > 0 ? `, ${f(r.prefill_ratio_fma_peak, 2)} of FMA peak` : ''}`,
    `  decode ${r.gen} tokens:  ${f(r.decode_tokens_per_s)} tok/s (${f(r.decode_seconds, 3)} s) = ` +
      `${f(r.decode_gb_s, 2)} GB/s of weights: ${f(r.decode_ratio, 2)} of read bandwidth ` +
      `(ceiling ${f(r.decode_ceiling_tokens_per_s)} tok/s)`,
    ...(r.batch !== null
      ? [
          `  decode at batch ${r.batch}: ${f(r.batch_decode_tokens_per_s!)} tok/s aggregate = ${f(r.batch_decode_ratio_to_prefill!, 2)} of the ` +
            `prefill rate measured between its steps (${f(r.batch_prefill_tokens_per_s!)} tok/s)`,
        ]
      : []),
    ...(r.all_reduce
      ? [
          `  all-reduce over ${r.tensor_parallel} ranks (shared memory): ${r.all_reduce.map((t) => `[${t.rows}, ${t.width}] ${f(t.microseconds)} us`).join(', ')}; ` +
            `a decoded token's take ${f(r.all_reduce_ms_per_token!, 2)} ms of its ${f(1e3 / r.decode_tokens_per_s, 2)} ms`,
        ]
      : []),
    `  peak resident memory: ${f(r.peak_rss_mb, 0)} MB; tensors the model allocated: ${mb(r.model_tensor_bytes)}; load ${f(r.load_seconds, 2)} s`,
  ].join('\n');
}
