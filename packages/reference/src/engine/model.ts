// The model behind every engine command, for either solution: the reference week 2 model (KV cache, weights
// kept in their file dtype or quantized) or the learner's week 1 model (no cache: each step runs the whole
// sequence again). Both are driven through a Session, which holds the tokens the model has seen.
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import * as tc from '@tiny-llm/tensor-core';
import type { ModelConfig, Tensor } from '@tiny-llm/tensor-core';
import { Qwen2ModelWeek2 } from '../week2/qwen2-week2.ts';
import type { KvCache } from '../week2/kv-cache.ts';
import { isNotImplemented, learnerNotImplemented, oneLine, UserError, withLearnerErrors } from './errors.ts';

export type Solution = 'learner' | 'reference';
export const SOLUTIONS: readonly Solution[] = ['learner', 'reference'];

/**
 * A conversation with the model: the tokens it has read so far (their keys and values are cached when the
 * model has a cache). Feeding tokens returns the logits of the last one; truncating forgets the tail, so a
 * new prompt that shares a prefix with the old one (the next turn of a chat) only feeds what is new.
 */
export interface Session {
  readonly tokens: readonly number[];
  /** Feeds ids after the tokens already read; returns the last position's logits, float32 [1, vocab]. */
  feed(ids: readonly number[]): Tensor;
  /** Keeps the first n tokens only. */
  truncate(n: number): void;
  /** Frees the cache. */
  dispose(): void;
}

export interface EngineModel {
  readonly config: ModelConfig;
  readonly solution: Solution;
  /** Whether sessions keep a KV cache (false: every step reruns the whole sequence). */
  readonly cached: boolean;
  newSession(): Session;
  /** The logits of every position of ids, float32 [L, vocab] (a fresh sequence, nothing cached). */
  allLogits(ids: readonly number[]): Tensor;
}

const idsTensor = (ids: readonly number[]): Tensor => tc.tensor(Int32Array.from(ids), { dtype: 'int32', shape: [1, ids.length] });

/** The reference model: week 2, with a KV cache per layer. */
export class CachedModel implements EngineModel {
  readonly solution = 'reference' as const;
  readonly cached = true;
  constructor(readonly model: Qwen2ModelWeek2) {}

  get config(): ModelConfig {
    return this.model.config;
  }

  newSession(): Session {
    const model = this.model;
    let cache: KvCache[] | null = model.newCache();
    const tokens: number[] = [];
    return {
      tokens,
      feed(ids) {
        if (!cache) throw new Error('Session: used after dispose');
        const x = idsTensor(ids);
        try {
          const logits = model.forwardLastLogits(x, cache, tokens.length);
          tokens.push(...ids);
          return logits;
        } finally {
          x.dispose();
        }
      },
      truncate(n) {
        if (n >= tokens.length) return;
        for (const c of cache ?? []) c.rewind(c.offset - n);
        tokens.length = n;
      },
      dispose() {
        for (const c of cache ?? []) c.dispose();
        cache = null;
      },
    };
  }

  allLogits(ids: readonly number[]): Tensor {
    const cache = this.model.newCache();
    const x = idsTensor(ids);
    try {
      const logits = this.model.forward(x, cache, 0); // [1, L, V]
      const out = tc.reshape(logits, [ids.length, logits.shape[2]]);
      if (out !== logits) logits.dispose();
      return out;
    } finally {
      x.dispose();
      for (const c of cache) c.dispose();
    }
  }
}

/** What the CLI needs of the learner's week 1 model (packages/week1/src/qwen2-week1.ts). */
interface Week1Model {
  readonly config: ModelConfig;
  forward(ids: Tensor): Tensor;
}

/** The learner's week 1 model: no cache, each feed runs every token so far. */
export class UncachedModel implements EngineModel {
  readonly solution = 'learner' as const;
  readonly cached = false;
  constructor(readonly model: Week1Model) {}

  get config(): ModelConfig {
    return this.model.config;
  }

  newSession(): Session {
    const model = this.model;
    const tokens: number[] = [];
    return {
      tokens,
      feed(ids) {
        tokens.push(...ids);
        try {
          return withLearnerErrors(() =>
            tc.tidy(() => {
              const logits = model.forward(idsTensor(tokens)); // [1, L, V]
              return tc.contiguous(tc.slice(logits, [null, -1])); // [1, V]
            }),
          );
        } catch (err) {
          tokens.length -= ids.length;
          throw err;
        }
      },
      truncate(n) {
        if (n < tokens.length) tokens.length = n;
      },
      dispose() {},
    };
  }

  allLogits(ids: readonly number[]): Tensor {
    return withLearnerErrors(() =>
      tc.tidy(() => {
        const logits = this.model.forward(idsTensor(ids));
        return tc.reshape(tc.contiguous(logits), [ids.length, logits.shape[2]]);
      }),
    );
  }
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

export interface LoadOptions {
  solution?: Solution;
  /** Loading progress (the reference model reports it; the learner's does not). */
  onProgress?: (done: number, total: number) => void;
}

/**
 * Loads a model directory with the chosen solution. A broken directory (bad config, missing or truncated
 * shard, missing weight) is the user's to fix: its error becomes a UserError naming the file.
 */
export async function loadModel(dir: string, options: LoadOptions = {}): Promise<EngineModel> {
  checkModelDir(dir);
  const solution = options.solution ?? 'reference';
  if (solution === 'reference') {
    try {
      return new CachedModel(Qwen2ModelWeek2.load(dir, { onProgress: options.onProgress }));
    } catch (err) {
      throw new UserError(`cannot load the model in ${dir}: ${oneLine(err)}`, { cause: err });
    }
  }
  // Loaded only when asked for: the reference engine does not depend on the learner's package.
  const week1 = (await import('../../../week1/src/index.ts')) as unknown as { Qwen2ModelWeek1: { load(dir: string): Week1Model } };
  try {
    return new UncachedModel(week1.Qwen2ModelWeek1.load(dir));
  } catch (err) {
    if (isNotImplemented(err)) throw learnerNotImplemented(err);
    throw new UserError(`cannot load the model in ${dir} (learner's week 1 model): ${oneLine(err)}`, { cause: err });
  }
}

/** The learner's sampler (chapter 1.7), for sampling with --solution learner. */
export async function learnerMakeSampler(): Promise<(options: object) => (logits: Tensor) => Tensor> {
  const week1 = (await import('../../../week1/src/index.ts')) as unknown as {
    makeSampler: (options: object) => (logits: Tensor) => Tensor;
  };
  return (options) => withLearnerErrors(() => {
    const sampler = week1.makeSampler(options);
    return (logits: Tensor) => withLearnerErrors(() => sampler(logits));
  });
}
