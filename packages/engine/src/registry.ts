// Which model runs: one registry keyed by solution and week, as the original course's main.py runs either
// solution. The solutions are the workspace packages @tiny-llm/reference (every chapter solved) and
// @tiny-llm/week1, @tiny-llm/week2, @tiny-llm/week3 (the learner's), imported only when asked for.
//
//   --solution reference (the default), no --week   the engine: the reference model with the speed-only kernels
//   --solution reference --week N                   the plain week N model of the reference solution
//   --solution learner --week N                     the learner's week N model (each week runs on the learner's earlier ones)
//   --solution learner, no --week                   the learner's highest week whose model is written
//   --tensor-parallel N (N > 1)                     the engine, or with --solution learner the learner's chapter 3.6
//                                                   model, split over N ranks (tensor-parallel/)
//
// --device webgpu runs the chosen chapter model on the GPU: its weights are handed out there by
// openModelDir's device, and the GPU becomes the process's default backend, where the chapter models create
// their other tensors (token ids, masks, RoPE tables, the KV cache). The engine's fused kernels are C++, so
// on the GPU the reference runs its plain week 2 model (week 3's for Qwen2-MoE, with the engine's mixture of
// experts, model/dense-moe.ts); its quantized matmul and flash attention are then chapters 2.3 and 2.5's WGSL
// kernels.
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import * as tc from '@tiny-llm/tensor-core';
import type { Sampler, SamplerOptions } from '@tiny-llm/reference/week1';
import type { KvCache as ReferenceKvCache } from '@tiny-llm/reference/week2';
import type { KvCache as LearnerKvCache } from '@tiny-llm/week2';
import { deviceErrorOf, isNotImplemented, learnerNotImplemented, oneLine, UserError, withLearnerErrors } from './errors.ts';
import type { SchedulerOptions } from '@tiny-llm/reference/week2';
import {
  DecodeScheduler,
  PagedScheduler,
  PrefillScheduler,
  type AgentOptions,
  type AgentResult,
  type ChatModel,
  type PagePool,
  type Tool,
} from '@tiny-llm/reference/week3';
import type { ChatMessage, ToolSchema } from '@tiny-llm/tokenizer';
import type { BatchScheduler } from './batch.ts';
import type { ToolRunner } from './chat.ts';
import { EngineBatchModel } from './batch-model.ts';
import { DeviceQwen2 } from './model/dense-moe.ts';
import { Qwen2Model } from './model/qwen2.ts';
import { EngineQwen2, Week1Session, Week2Session, type EngineModel } from './session.ts';
import { TensorParallelBatchModel, TensorParallelModel } from './tensor-parallel/parallel-model.ts';

export type Solution = 'learner' | 'reference';
export const SOLUTIONS: readonly Solution[] = ['learner', 'reference'];
/** The weeks whose model the engine can run. */
export const WEEKS = [1, 2, 3] as const;
export type Week = (typeof WEEKS)[number];

export type Device = 'cpu' | 'webgpu';
export const DEVICES: readonly Device[] = ['cpu', 'webgpu'];

export interface ModelChoice {
  solution?: Solution;
  /** A week's plain chapter model; none: the engine (reference), or the learner's highest written week. */
  week?: Week;
  /** Where the model runs (default the CPU). */
  device?: Device;
  /** Ranks to split the model over (chapter 3.6); 1 (the default) runs it whole. */
  tensorParallel?: number;
  /**
   * The engine multiplies quantized weights by float32 activations, as the chapters' models always do (their
   * goldens hold to 1e-4), instead of int16 ones (Qwen2LoadOptions.exact).
   */
  exact?: boolean;
}

export interface LoadOptions extends ModelChoice {
  /** Loading progress (the engine reports it; the chapter models do not). */
  onProgress?: (done: number, total: number) => void;
}

/** Checks that `dir` looks like a model directory before loading it, with a message that says what is wrong. */
export function checkModelDir(dir: string): void {
  if (!existsSync(dir)) throw new UserError(`--model ${dir}: no such directory`);
  if (!statSync(dir).isDirectory()) throw new UserError(`--model ${dir}: a file, not a model directory`);
  if (!existsSync(join(dir, 'config.json'))) {
    const found = readdirSync(dir).sort();
    const listing = found.length === 0 ? 'it is empty' : `it holds ${found.slice(0, 8).join(', ')}${found.length > 8 ? ', ...' : ''}`;
    throw new UserError(`--model ${dir}: not a model directory (no config.json; ${listing})`);
  }
}

/** The GPU of --device webgpu, opened at the first load that asks for it. */
let gpu: tc.WebGPUBackend | null = null;

/**
 * The backend of a device. The GPU is opened once and made the process's default backend (a process runs its
 * model on one device); without an adapter, a UserError that says what initWebGPU tried.
 */
export async function deviceBackend(device: Device = 'cpu'): Promise<tc.Backend> {
  if (device === 'cpu') return tc.cpu;
  if (!gpu) {
    try {
      gpu = await tc.initWebGPU();
    } catch (err) {
      throw new UserError(`--device webgpu: ${oneLine(err).replace(/^initWebGPU: /, '')} (docs/gpu.md says what each platform needs)`, {
        cause: err,
      });
    }
    tc.setDefaultBackend(gpu);
  }
  return gpu;
}

/** Frees the GPU if one was opened: Dawn keeps the process alive while its device exists. */
export function closeDevice(): void {
  if (!gpu) return;
  tc.setDefaultBackend(tc.cpu);
  gpu.destroy();
  gpu = null;
}

/** Where a model runs, for messages: "cpu", or "webgpu (the adapter)". */
const placeOf = (backend: tc.Backend) => (backend instanceof tc.WebGPUBackend ? `webgpu (${backend.adapterName})` : backend.name);

/** Each solution's week modules, imported through the workspace packages only when asked for. */
const MODULES = {
  reference: {
    week1: () => import('@tiny-llm/reference/week1'),
    week2: () => import('@tiny-llm/reference/week2'),
    week3: () => import('@tiny-llm/reference/week3'),
  },
  learner: { week1: () => import('@tiny-llm/week1'), week2: () => import('@tiny-llm/week2'), week3: () => import('@tiny-llm/week3') },
};

/** Why a chapter model did not load: a stub, a GPU it does not fit, or a broken directory (named). */
function loadError(err: unknown, dir: string, description: string): UserError {
  if (isNotImplemented(err)) return learnerNotImplemented(err);
  const onDevice = deviceErrorOf(err);
  if (onDevice instanceof UserError) return onDevice;
  return new UserError(`cannot load the model in ${dir} (${description}): ${oneLine(err)}`, { cause: err });
}

/** The engine on a GPU: the reference chapter model with the engine's mixture of experts (model/dense-moe.ts). */
async function loadEngineOnDevice(dir: string, device: Device): Promise<EngineModel> {
  let description = 'the reference week 2 model';
  const backend = await deviceBackend(device);
  try {
    const modelDir = tc.openModelDir(dir, { device: backend });
    description = DeviceQwen2.describe(modelDir);
    return new Week2Session<ReferenceKvCache>(new DeviceQwen2(modelDir), description, placeOf(backend));
  } catch (err) {
    throw loadError(err, dir, description);
  }
}

/** Chapter 3.3's block decides the routing on the host, reading it back: week 3 runs Qwen2-MoE on the CPU only. */
function checkWeek3Device(week: Week | undefined, modelDir: tc.ModelDir, backend: tc.Backend): void {
  if (week === 3 && modelDir.config.moe && backend !== tc.cpu) {
    throw new UserError(
      "--week 3 runs Qwen2-MoE on the CPU only (chapter 3.3's block reads the routing back); on a GPU, the engine (no --week) runs it",
    );
  }
}

/** Loads week `week`'s model of a solution on a device, wrapped for the engine. */
async function loadChapterModel(dir: string, solution: Solution, week: Week, device: Device = 'cpu'): Promise<EngineModel> {
  const description = `the ${solution === 'learner' ? "learner's" : 'reference'} week ${week} model`;
  const backend = await deviceBackend(device);
  const place = placeOf(backend);
  try {
    const modules = MODULES[solution];
    const modelDir = tc.openModelDir(dir, { device: backend });
    if (week === 1) return new Week1Session(new (await modules.week1()).Qwen2ModelWeek1(modelDir), description, place);
    checkWeek3Device(week, modelDir, backend);
    // One branch per solution: their week 2 models have caches of different classes. Week 3's model is week 2's
    // with mixture-of-experts layers (chapter 3.3), driven the same way.
    if (solution === 'reference') {
      const model = week === 3 ? (await MODULES.reference.week3()).Qwen2ModelWeek3 : (await MODULES.reference.week2()).Qwen2ModelWeek2;
      return new Week2Session<ReferenceKvCache>(new model(modelDir), description, place);
    }
    const model = week === 3 ? (await MODULES.learner.week3()).Qwen2ModelWeek3 : (await MODULES.learner.week2()).Qwen2ModelWeek2;
    return new Week2Session<LearnerKvCache>(new model(modelDir), description, place);
  } catch (err) {
    throw loadError(err, dir, description);
  }
}

/**
 * Loads a model directory with the chosen solution, week and device (on the GPU, the reference runs its week
 * 2 model). A broken directory (bad config, missing or truncated shard, missing weight) is the user's to fix:
 * its error becomes a UserError naming the file.
 */
export async function loadModel(dir: string, options: LoadOptions = {}): Promise<EngineModel> {
  checkModelDir(dir);
  if ((options.tensorParallel ?? 1) > 1) return loadTensorParallel(dir, options);
  const solution = options.solution ?? 'reference';
  const device = options.device ?? 'cpu';
  if (options.week !== undefined) return loadChapterModel(dir, solution, options.week, device);
  if (solution === 'learner') return loadLearnerHighestWeek(dir, device);
  if (device !== 'cpu') return loadEngineOnDevice(dir, device);
  try {
    return new EngineQwen2(Qwen2Model.load(dir, { onProgress: options.onProgress, exact: options.exact }));
  } catch (err) {
    throw new UserError(`cannot load the model in ${dir}: ${oneLine(err)}`, { cause: err });
  }
}

/**
 * The model split over N ranks (chapter 3.6), rank 0 on this thread and the others on threads of their own: the
 * engine's model, or with --solution learner the learner's chapter 3.6 code (on their own week 2 model).
 */
async function loadTensorParallel(dir: string, choice: ModelChoice): Promise<TensorParallelModel> {
  const n = choice.tensorParallel!;
  if (choice.week !== undefined) {
    throw new UserError(
      `--tensor-parallel ${n} splits the engine's model, or with --solution learner your chapter 3.6 model: leave out --week`,
    );
  }
  const learner = choice.solution === 'learner';
  const description = learner
    ? `the learner's chapter 3.6 model on ${n} tensor-parallel ranks`
    : `the engine on ${n} tensor-parallel ranks`;
  try {
    return await TensorParallelModel.start(
      { weights: { modelDir: dir }, code: learner ? 'learner' : 'engine', worldSize: n, exact: choice.exact },
      description,
    );
  } catch (err) {
    if (err instanceof UserError) throw err;
    throw new UserError(`cannot load the model in ${dir} on ${n} tensor-parallel ranks: ${oneLine(err)}`, { cause: err });
  }
}

/** The learner's model of the highest week that loads (a week whose model is still a stub is skipped). */
async function loadLearnerHighestWeek(dir: string, device: Device): Promise<EngineModel> {
  let stub: UserError | undefined;
  for (const week of [...WEEKS].reverse()) {
    try {
      return await loadChapterModel(dir, 'learner', week, device);
    } catch (err) {
      // A week whose model is not written yet: try the one before, and report the earliest if none loads.
      if (!(err instanceof UserError && isNotImplemented(err.cause))) throw err;
      stub = err;
    }
  }
  throw stub!;
}

/** The learner's sampler (chapter 1.7), for sampling with --solution learner. */
export async function learnerMakeSampler(): Promise<(options: SamplerOptions) => Sampler> {
  const { makeSampler } = await MODULES.learner.week1();
  return (options) => {
    const sampler = withLearnerErrors(() => makeSampler(options));
    return (logits) => withLearnerErrors(() => sampler(logits));
  };
}

/** The learner's speculative decoding (chapter 3.4), for --draft-model with --solution learner. */
export async function learnerSpeculativeDecode(): Promise<typeof import('@tiny-llm/reference/week3').speculativeDecode> {
  const { speculativeDecode } = await MODULES.learner.week3();
  return (target, draft, promptIds, options) => withLearnerErrors(() => speculativeDecode(target, draft, promptIds, options));
}

/** What the engine needs of a solution's chapter 3.7: its demo tools, its registry and its agent loop. */
interface AgentModule<Registry> {
  demoTools(): Tool[];
  ToolRegistry: new (tools: Tool[]) => Registry & { readonly schemas: ToolSchema[] };
  runAgent(model: ChatModel, registry: Registry, messages: readonly ChatMessage[], options: AgentOptions): Promise<AgentResult>;
}

/**
 * The agent loop of a solution's chapter 3.7 over its built-in demo tools: those `schemas` name (a --tools file's;
 * each must be a built-in tool), or all of them.
 */
export async function loadToolRunner(solution: Solution, schemas?: readonly ToolSchema[]): Promise<ToolRunner> {
  return solution === 'learner'
    ? toolRunnerOf(await MODULES.learner.week3(), schemas)
    : toolRunnerOf(await MODULES.reference.week3(), schemas);
}

function toolRunnerOf<Registry>(week3: AgentModule<Registry>, schemas?: readonly ToolSchema[]): ToolRunner {
  const builtIn = new Map(withLearnerErrors(() => week3.demoTools()).map((tool) => [tool.schema.function.name, tool]));
  const tools = (schemas ?? [...builtIn.values()].map((t) => t.schema)).map((schema) => {
    const tool = builtIn.get(schema.function.name);
    if (!tool)
      throw new UserError(
        `--run-tools: no built-in tool runs "${schema.function.name}" (the built-in tools are ${[...builtIn.keys()].join(', ')})`,
      );
    return { schema, run: tool.run };
  });
  const registry = withLearnerErrors(() => new week3.ToolRegistry(tools));
  return {
    schemas: registry.schemas,
    run: (model, messages, options) => withLearnerErrors(() => week3.runAgent(model, registry, messages, options)),
  };
}

/** A scheduler (chapter 2.6) over the chosen model: what `batch`, `bench --batch` and the server drive. */
export interface LoadedScheduler<Scheduler extends BatchScheduler = BatchScheduler> {
  scheduler: Scheduler;
  config: tc.ModelConfig;
  description: string;
  /** The engine's page pool (chapter 3.1); the week 2 models have none. */
  pool?: PagePool;
}

/** The engine's KV cache: a pool of pages of 16 tokens (chapter 3.1), with prefix caching (chapter 3.2). */
export interface KvCacheChoice {
  /** The pool's size in MB (default DEFAULT_KV_CACHE_MB). */
  kvCacheMb?: number;
  /** false: every prompt computed whole, no prefix shared between requests (default true). */
  prefixCaching?: boolean;
}

export const DEFAULT_KV_CACHE_MB = 512;

/**
 * The engine's model on a page pool (chapter 3.1), with prefix caching unless turned off: what every scheduler
 * of the engine runs on.
 */
function loadEngineBatchModel(dir: string, kv: KvCacheChoice, exact?: boolean): { paged: EngineBatchModel; cache: string } {
  let model: Qwen2Model;
  try {
    model = Qwen2Model.load(dir, { exact });
  } catch (err) {
    throw new UserError(`cannot load the model in ${dir}: ${oneLine(err)}`, { cause: err });
  }
  const megabytes = kv.kvCacheMb ?? DEFAULT_KV_CACHE_MB;
  const numPages = EngineBatchModel.pagesIn(model.config, megabytes);
  if (numPages < 1) throw new UserError(`--kv-cache-mb ${megabytes}: too small for one page of 16 tokens of this model`);
  const paged = new EngineBatchModel(model, { numPages, prefixCaching: kv.prefixCaching });
  return {
    paged,
    cache: `a KV cache of ${numPages} pages of 16 tokens (${megabytes} MB)${paged.pool.prefixCache ? ' with prefix caching' : ''}`,
  };
}

/** The two halves of disaggregated serving (chapter 3.5): a worker's scheduler prefills, or decodes. */
export type Phase = 'prefill' | 'decode';
const PHASE_SCHEDULERS = { prefill: PrefillScheduler, decode: DecodeScheduler };

/**
 * One phase of disaggregated serving on the engine's model: chapter 3.5's PrefillScheduler or DecodeScheduler,
 * each on a page pool of its own. The decode pool shares no prefixes: its requests arrive prefilled.
 */
export function loadPhaseScheduler<P extends Phase>(
  dir: string,
  phase: P,
  options: SchedulerOptions & KvCacheChoice,
  exact?: boolean,
): LoadedScheduler<InstanceType<(typeof PHASE_SCHEDULERS)[P]>> {
  checkModelDir(dir);
  const { paged, cache } = loadEngineBatchModel(dir, phase === 'decode' ? { ...options, prefixCaching: false } : options, exact);
  const scheduler = new PHASE_SCHEDULERS[phase](paged, { maxBatch: options.maxBatch, prefillChunk: options.prefillChunk }) as InstanceType<
    (typeof PHASE_SCHEDULERS)[P]
  >;
  return { scheduler, config: paged.config, description: `the engine's ${phase} worker, ${cache}`, pool: paged.pool };
}

/**
 * Continuous batching over the chosen model: the engine (chapter 3.1's PagedScheduler over the engine's model on a
 * page pool), a week 2 or 3 model with its own solution's Scheduler, or a tensor-parallel group (chapter 3.6) with week 2's.
 * Week 1's model has no cache to batch with.
 */
export async function loadScheduler(dir: string, choice: ModelChoice, options: SchedulerOptions & KvCacheChoice): Promise<LoadedScheduler> {
  checkModelDir(dir);
  const solution = choice.solution ?? 'reference';
  const device = choice.device ?? 'cpu';
  if (choice.week === 1) throw new UserError("batching needs a model with a KV cache: the engine, or --week 2 (week 1's model has none)");
  const schedulerError = (err: unknown) => new UserError(`the scheduler: ${oneLine(err)}`, { cause: err });
  const { maxBatch, prefillChunk } = options;
  const tensorParallel = (choice.tensorParallel ?? 1) > 1;
  if (choice.week === undefined && solution === 'reference' && device === 'cpu' && !tensorParallel) {
    const { paged, cache } = loadEngineBatchModel(dir, options, choice.exact);
    try {
      return {
        scheduler: new PagedScheduler(paged, { maxBatch, prefillChunk }),
        config: paged.config,
        description: `the engine, ${cache}`,
        pool: paged.pool,
      };
    } catch (err) {
      throw schedulerError(err);
    }
  }
  if (options.kvCacheMb !== undefined || options.prefixCaching === false) {
    throw new UserError(
      "--kv-cache-mb and --no-prefix-cache set the engine's paged KV cache; the chapter models and tensor-parallel ranks keep a cache per request",
    );
  }
  if (tensorParallel) {
    // The course's scheduler over the group, whichever code the ranks run (the chapter under test is 3.6).
    const { Scheduler } = await MODULES.reference.week2();
    const { group, config, description } = await loadTensorParallel(dir, choice);
    return { scheduler: new Scheduler(new TensorParallelBatchModel(group), { maxBatch, prefillChunk }), config, description };
  }
  const backend = await deviceBackend(device);
  let description = `the ${solution === 'learner' ? "learner's" : 'reference'} week ${choice.week ?? 2} model`;
  try {
    const modelDir = tc.openModelDir(dir, { device: backend });
    checkWeek3Device(choice.week, modelDir, backend);
    if (choice.week === undefined && solution === 'reference') description = DeviceQwen2.describe(modelDir);
    description += ` and scheduler, on ${placeOf(backend)}`;
    // One branch per solution: their classes are of different declarations.
    if (solution === 'reference') {
      const week2 = await MODULES.reference.week2();
      const week3 = await MODULES.reference.week3();
      const model =
        choice.week === undefined
          ? new DeviceQwen2(modelDir)
          : choice.week === 3
            ? new week3.Qwen2ModelWeek3(modelDir)
            : new week2.Qwen2ModelWeek2(modelDir);
      return {
        scheduler: new week2.Scheduler(new week2.Week2BatchModel(model), { maxBatch, prefillChunk }),
        config: model.config,
        description,
      };
    }
    const week2 = await MODULES.learner.week2();
    const model = choice.week === 3 ? new (await MODULES.learner.week3()).Qwen2ModelWeek3(modelDir) : new week2.Qwen2ModelWeek2(modelDir);
    return {
      scheduler: new week2.Scheduler(new week2.Week2BatchModel(model), { maxBatch, prefillChunk }),
      config: model.config,
      description,
    };
  } catch (err) {
    throw loadError(err, dir, description);
  }
}
