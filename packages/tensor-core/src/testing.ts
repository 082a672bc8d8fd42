// Test utilities shared by every package's tests (`@tiny-llm/tensor-core/testing`): the golden fixtures,
// comparisons, and independent reference computations (plain loops over row-major index arithmetic,
// sharing no code with the library).
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, beforeEach, expect } from 'vitest';
import { initWebGPU, type WebGPUBackend } from './backend/webgpu/index.ts';
import { tensor } from './ops/creation.ts';
import { readSafetensors } from './io/safetensors.ts';
import type { Tensor } from './tensor.ts';

/** The repository's copy of the golden fixtures (computed in float64 by PyTorch + transformers). */
export const FIXTURES_DIR = fileURLToPath(new URL('../../../fixtures/', import.meta.url));

export type GoldenCase = { name: string; [param: string]: unknown };

/** The cases of fixtures/ops/<op>.safetensors and their tensors (`<case>.<name>`). */
export function goldenOp(op: string) {
  const file = readSafetensors(`${FIXTURES_DIR}ops/${op}.safetensors`);
  const cases = JSON.parse(file.metadata.cases ?? '[]') as GoldenCase[];
  // A loop over no cases would pass with no test at all.
  if (!Array.isArray(cases) || cases.length === 0) throw new Error(`fixtures/ops/${op}.safetensors lists no cases in its metadata`);
  return {
    cases,
    get: (c: GoldenCase, name: string): Tensor => file.get(`${c.name}.${name}`),
    has: (c: GoldenCase, name: string): boolean => file.has(`${c.name}.${name}`),
  };
}

/** ||actual - expected|| / ||expected||, the measure for low-precision (bf16) results. */
export function relativeError(actual: ArrayLike<number>, expected: ArrayLike<number>): number {
  let num = 0;
  let den = 0;
  for (let i = 0; i < expected.length; i++) {
    num += (actual[i] - expected[i]) ** 2;
    den += expected[i] ** 2;
  }
  return Math.sqrt(num / den);
}

export type NDArray = { shape: number[]; data: Float64Array };

export function nd(shape: number[], fill: (i: number) => number): NDArray {
  const n = shape.reduce((p, d) => p * d, 1);
  return { shape, data: Float64Array.from({ length: n }, (_, i) => fill(i)) };
}

/** Deterministic pseudo-random values in [-scale, scale) (an LCG, unrelated to the library's generator). */
export function seeded(n: number, seed = 1, scale = 1): number[] {
  let s = seed >>> 0;
  return Array.from({ length: n }, () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return ((s / 2 ** 32) * 2 - 1) * scale;
  });
}

/** A float32 tensor of `shape` filled with seeded(size, seed, scale). */
export function seededTensor(shape: number[], seed: number, scale = 1): Tensor {
  return tensor(
    seeded(
      shape.reduce((a, b) => a * b, 1),
      seed,
      scale,
    ),
    { shape },
  );
}

export function unravel(flat: number, shape: number[]): number[] {
  const idx = new Array<number>(shape.length);
  for (let d = shape.length - 1; d >= 0; d--) {
    idx[d] = flat % shape[d];
    flat = Math.floor(flat / shape[d]);
  }
  return idx;
}

export function ravel(idx: number[], shape: number[]): number {
  let flat = 0;
  for (let d = 0; d < shape.length; d++) flat = flat * shape[d] + idx[d];
  return flat;
}

/** Value of `a` at the index `idx` of a broadcast result of rank idx.length. */
export function broadcastAt(a: NDArray, idx: number[]): number {
  const lead = idx.length - a.shape.length;
  const own = a.shape.map((d, i) => (d === 1 ? 0 : idx[lead + i]));
  return a.data[ravel(own, a.shape)];
}

export function expectClose(actual: ArrayLike<number>, expected: ArrayLike<number>, atol = 1e-5, rtol = 0): void {
  expect(actual.length).toBe(expected.length);
  let worst = 0;
  let at = -1;
  for (let i = 0; i < expected.length; i++) {
    const a = actual[i];
    const e = expected[i];
    if (Number.isNaN(e)) {
      expect(Number.isNaN(a), `index ${i}: expected NaN, got ${a}`).toBe(true);
      continue;
    }
    if (a === e) continue;
    const err = Math.abs(a - e) - rtol * Math.abs(e);
    if (!(err <= worst)) {
      worst = Number.isNaN(err) ? Infinity : err;
      at = i;
    }
  }
  expect(worst, `worst error at index ${at}: got ${actual[at]}, expected ${expected[at]}`).toBeLessThanOrEqual(atol);
}

/** The repository's embedded demo models (models/), each with a golden.json of reference generations. */
export const MODELS_DIR = fileURLToPath(new URL('../../../models/', import.meta.url));
export const DEMO_MODELS = ['tiny-qwen2-py', 'tiny-qwen2-py-draft', 'tiny-qwen2-moe-py'] as const;

/** One prompt of a demo model's golden.json: 48 greedy tokens computed by transformers, without stopping. */
export interface DemoGoldenCase {
  kind: 'text' | 'chat';
  /** The prompt text (chat prompts already rendered through the chat template). */
  prompt: string;
  ids: number[];
  greedy: number[];
  /** The greedy tokens decoded with special tokens kept. */
  greedy_text: string;
  /** For chat prompts: the messages the prompt was rendered from. */
  messages?: { role: 'system' | 'user' | 'assistant' | 'tool'; content: string }[];
  /** true when the chat prompt was rendered with the demo tools (models/<name>/tools.json). */
  tools?: boolean;
}

export function demoGolden(model: string): { max_new_tokens: number; cases: DemoGoldenCase[] } {
  const golden = JSON.parse(readFileSync(`${MODELS_DIR}${model}/golden.json`, 'utf8'));
  if (!Array.isArray(golden.cases) || golden.cases.length === 0) throw new Error(`models/${model}/golden.json has no cases`);
  return golden;
}

/**
 * The GPU a test file runs on: whatever adapter initWebGPU finds (here and in CI, Mesa's software GLES).
 * Registers the suite's set-up and returns the backend (valid inside tests). There is no skip: without an
 * adapter every test fails with initWebGPU's message.
 */
export function useGpu(): () => WebGPUBackend {
  let gpu: WebGPUBackend | null = null;
  let initError: unknown = null;
  beforeAll(async () => {
    try {
      gpu = await initWebGPU();
    } catch (err) {
      initError = err;
    }
  });
  beforeEach(() => {
    if (initError) throw initError;
  });
  afterAll(async () => {
    if (!gpu) return;
    // Let the device finish what was queued (a test that threw may leave uploads in flight) before it goes.
    await gpu.device.queue.onSubmittedWorkDone();
    gpu.destroy();
  });
  return () => gpu!;
}
