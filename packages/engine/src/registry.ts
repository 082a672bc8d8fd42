// Which model runs: one registry keyed by solution and week, as the original course's main.py runs either
// solution. The solutions are the workspace packages @tiny-llm/reference (every chapter solved) and
// @tiny-llm/week1, @tiny-llm/week2 (the learner's), imported only when asked for.
//
//   --solution reference (the default), no --week   the engine: the reference model with the speed-only kernels
//   --solution reference --week N                   the plain week N model of the reference solution
//   --solution learner --week N                     the learner's week N model (week 2 runs on the learner's week 1)
//   --solution learner, no --week                   the learner's highest week whose model is written
//
// --device webgpu runs the chosen chapter model on the GPU: its weights are handed out there by
// openModelDir's device, and the GPU becomes the process's default backend, where the chapter models create
// their other tensors (token ids, masks, RoPE tables, the KV cache). The engine's fused kernels are C++, so
// on the GPU the reference runs its plain week 2 model (--week 2); its quantized matmul and flash attention
// are then chapters 2.3 and 2.5's WGSL kernels.
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import * as tc from '@tiny-llm/tensor-core';
import type { Sampler, SamplerOptions } from '@tiny-llm/reference/week1';
import type { KvCache as ReferenceKvCache } from '@tiny-llm/reference/week2';
import type { KvCache as LearnerKvCache } from '@tiny-llm/week2';
import { deviceErrorOf, isNotImplemented, learnerNotImplemented, oneLine, UserError, withLearnerErrors } from './errors.ts';
import type { Qwen2Week2Options, SchedulerOptions } from '@tiny-llm/reference/week2';
import type { BatchScheduler } from './batch.ts';
import { EngineBatchModel } from './batch-model.ts';
import { DenseMoe } from './model/dense-moe.ts';
import { Qwen2Model } from './model/qwen2.ts';
import { EngineQwen2, Week1Session, Week2Session, type EngineModel, type Week1Model, type Week2Model } from './session.ts';

export type Solution = 'learner' | 'reference';
export const SOLUTIONS: readonly Solution[] = ['learner', 'reference'];
/** The weeks whose model the engine can run. */
export const WEEKS = [1, 2] as const;
export type Week = (typeof WEEKS)[number];

export type Device = 'cpu' | 'webgpu';
export const DEVICES: readonly Device[] = ['cpu', 'webgpu'];

export interface ModelChoice {
  solution?: Solution;
  /** A week's plain chapter model; none: the engine (reference), or the learner's highest written week. */
  week?: Week;
  /** Where the model runs (default the CPU). */
  device?: Device;
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
      throw new UserError(`--device webgpu: ${oneLine(err).replace(/^initWebGPU: /, '')} (docs/gpu.md says what each platform needs)`, { cause: err });
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
  reference: { week1: () => import('@tiny-llm/reference/week1'), week2: () => import('@tiny-llm/reference/week2') },
  learner: { week1: () => import('@tiny-llm/week1'), week2: () => import('@tiny-llm/week2') },
};

/** Why a chapter model did not load: a stub, a GPU it does not fit, or a broken directory (named). */
function loadError(err: unknown, dir: string, description: string): UserError {
  if (isNotImplemented(err)) return learnerNotImplemented(err);
  const onDevice = deviceErrorOf(err);
  if (onDevice instanceof UserError) return onDevice;
  return new UserError(`cannot load the model in ${dir} (${description}): ${oneLine(err)}`, { cause: err });
}

/**
 * The week 2 model's options for a checkpoint: a Qwen2-MoE one gets the engine's mixture of experts (week 3's
 * block, which week 2 does not have) in its sparse layers.
 */
function week2Options(modelDir: tc.ModelDir): Qwen2Week2Options {
  return modelDir.config.moe ? { mlp: (md, layer) => DenseMoe.forLayer(md, layer) } : {};
}

/** "the reference week 2 model", and what the engine added to it. */
function chapterDescription(solution: Solution, week: Week, modelDir: tc.ModelDir): string {
  const moe = week === 2 && modelDir.config.moe ? " with the engine's mixture of experts" : '';
  return `the ${solution === 'learner' ? "learner's" : 'reference'} week ${week} model${moe}`;
}

/** Loads week `week`'s model of a solution on a device, wrapped for the engine. */
async function loadChapterModel(dir: string, solution: Solution, week: Week, device: Device = 'cpu'): Promise<EngineModel> {
  let description = `the ${solution === 'learner' ? "learner's" : 'reference'} week ${week} model`;
  const backend = await deviceBackend(device);
  const place = placeOf(backend);
  try {
    const modules = MODULES[solution];
    const modelDir = tc.openModelDir(dir, { device: backend });
    description = chapterDescription(solution, week, modelDir);
    if (week === 1) return new Week1Session(new (await modules.week1()).Qwen2ModelWeek1(modelDir), description, place);
    const options = week2Options(modelDir);
    // One branch per solution: their week 2 models have caches of different classes.
    if (solution === 'reference') return new Week2Session<ReferenceKvCache>(new (await MODULES.reference.week2()).Qwen2ModelWeek2(modelDir, options), description, place);
    return new Week2Session<LearnerKvCache>(new (await MODULES.learner.week2()).Qwen2ModelWeek2(modelDir, options), description, place);
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
  const solution = options.solution ?? 'reference';
  const device = options.device ?? 'cpu';
  if (options.week !== undefined) return loadChapterModel(dir, solution, options.week, device);
  if (solution === 'learner') return loadLearnerHighestWeek(dir, device);
  if (device !== 'cpu') return loadChapterModel(dir, solution, 2, device);
  try {
    return new EngineQwen2(Qwen2Model.load(dir, { onProgress: options.onProgress }));
  } catch (err) {
    throw new UserError(`cannot load the model in ${dir}: ${oneLine(err)}`, { cause: err });
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

/** A scheduler (chapter 2.6) over the chosen model: what `batch`, `bench --batch` and the server drive. */
export interface LoadedScheduler {
  scheduler: BatchScheduler;
  config: tc.ModelConfig;
  description: string;
}

/**
 * Continuous batching over the chosen model: the engine (the reference Scheduler over the engine's model), or
 * a week 2 model with its own solution's Scheduler. Week 1's model has no cache to batch with.
 */
export async function loadScheduler(dir: string, choice: ModelChoice, options: SchedulerOptions): Promise<LoadedScheduler> {
  checkModelDir(dir);
  const solution = choice.solution ?? 'reference';
  const device = choice.device ?? 'cpu';
  if (choice.week === 1) throw new UserError("batching needs a model with a KV cache: the engine, or --week 2 (week 1's model has none)");
  const schedulerError = (err: unknown) => new UserError(`the scheduler: ${oneLine(err)}`, { cause: err });
  if (choice.week === undefined && solution === 'reference' && device === 'cpu') {
    const { Scheduler } = await MODULES.reference.week2();
    let model: Qwen2Model;
    try {
      model = Qwen2Model.load(dir);
    } catch (err) {
      throw new UserError(`cannot load the model in ${dir}: ${oneLine(err)}`, { cause: err });
    }
    try {
      return { scheduler: new Scheduler(new EngineBatchModel(model), options), config: model.config, description: 'the engine' };
    } catch (err) {
      throw schedulerError(err);
    }
  }
  const backend = await deviceBackend(device);
  let description = `the ${solution === 'learner' ? "learner's" : 'reference'} week 2 model`;
  try {
    const modelDir = tc.openModelDir(dir, { device: backend });
    description = `${chapterDescription(solution, 2, modelDir)} and scheduler, on ${placeOf(backend)}`;
    // One branch per solution: their classes are of different declarations.
    if (solution === 'reference') {
      const week2 = await MODULES.reference.week2();
      const model = new week2.Qwen2ModelWeek2(modelDir, week2Options(modelDir));
      return { scheduler: new week2.Scheduler(new week2.Week2BatchModel(model), options), config: model.config, description };
    }
    const week2 = await MODULES.learner.week2();
    const model = new week2.Qwen2ModelWeek2(modelDir, week2Options(modelDir));
    return { scheduler: new week2.Scheduler(new week2.Week2BatchModel(model), options), config: model.config, description };
  } catch (err) {
    throw loadError(err, dir, description);
  }
}
