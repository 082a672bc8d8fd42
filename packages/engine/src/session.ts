// The model behind every engine command, whatever solution and week it comes from, driven through a Session:
// the tokens the model has read so far, whose keys and values it caches when it has a cache.
import * as tc from '@tiny-llm/tensor-core';
import type { ModelConfig, Tensor } from '@tiny-llm/tensor-core';
import type { DecodingModel } from '@tiny-llm/reference/week3';
import { withLearnerErrors } from './errors.ts';
import { DecodeGraph } from './model/decode-graph.ts';
import type { DecodeKvCache } from './model/kv-cache.ts';
import type { Qwen2Model } from './model/qwen2.ts';

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
  /** What runs, for messages: "the engine", "the reference week 2 model", "the learner's week 1 model". */
  readonly description: string;
  /** Where it runs, for messages: "cpu", or "webgpu (the adapter)". */
  readonly device: string;
  /** Whether sessions keep a KV cache (false: every step reruns the whole sequence). */
  readonly cached: boolean;
  /** The model as speculative decoding (chapter 3.4) drives it, with caches it can rewind; null without a cache. */
  readonly decoding: DecodingModel | null;
  newSession(): Session;
  /** The logits of every position of ids, float32 [L, vocab] (a fresh sequence, nothing cached). */
  allLogits(ids: readonly number[]): Tensor;
}

/** Token ids [1, L] on a backend (by default the default backend, where the chapter models run). */
export const idsTensor = (ids: readonly number[], device = tc.getDefaultBackend()): Tensor =>
  tc.tensor(Int32Array.from(ids), { dtype: 'int32', shape: [1, ids.length], device });

/** logits [1, L, V] -> [L, V], the view kept and the original freed. */
export function positionsOf(logits: Tensor, length: number): Tensor {
  const out = tc.reshape(logits, [length, logits.shape[2]]);
  if (out !== logits) logits.dispose();
  return out;
}

/** The engine: the reference model with the kernels that exist only for speed (model/qwen2.ts). */
export class EngineQwen2 implements EngineModel {
  readonly description = 'the engine';
  readonly device = 'cpu';
  readonly cached = true;
  readonly decoding: DecodingModel<DecodeKvCache>;

  /**
   * decodeGraphs (default true): a session replays its one-token steps from a captured graph where the model
   * allows it (model/decode-graph.ts); false runs every step through the model's forward pass.
   */
  constructor(
    readonly model: Qwen2Model,
    private readonly options: { decodeGraphs?: boolean } = {},
  ) {
    this.decoding = {
      config: model.config,
      newCache: () => model.newCache(),
      forward: (ids, offset, cache) => model.forward(ids, [...cache], offset),
    };
  }

  get config(): ModelConfig {
    return this.model.config;
  }

  newSession(): Session {
    const model = this.model;
    let cache: DecodeKvCache[] | null = model.newCache();
    const tokens: number[] = [];
    const graphs = this.options.decodeGraphs !== false && DecodeGraph.supports(model);
    let graph: DecodeGraph | null = null;
    // A one-token step from the graph, captured again whenever the last one no longer fits (the cache grew).
    const decodeStep = (token: number): Tensor | null => {
      if (!graph?.canStep()) {
        graph?.dispose();
        graph = DecodeGraph.capture(model, cache!, token);
      } else {
        graph.step(token);
      }
      return graph?.logits() ?? null;
    };
    return {
      tokens,
      feed(ids) {
        if (!cache) throw new Error('Session: used after dispose');
        if (graphs && ids.length === 1) {
          const logits = decodeStep(ids[0]);
          if (logits) {
            tokens.push(ids[0]);
            return logits;
          }
        }
        const x = idsTensor(ids, tc.cpu);
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
        graph?.dispose();
        graph = null;
        for (const c of cache ?? []) c.dispose();
        cache = null;
      },
    };
  }

  allLogits(ids: readonly number[]): Tensor {
    const cache = this.model.newCache();
    const x = idsTensor(ids, tc.cpu);
    try {
      return positionsOf(this.model.forward(x, cache, 0), ids.length);
    } finally {
      x.dispose();
      for (const c of cache) c.dispose();
    }
  }
}

/** What the engine needs of a week 1 model (packages/week1/src/qwen2-week1.ts and its solution). */
export interface Week1Model {
  readonly config: ModelConfig;
  forward(ids: Tensor): Tensor;
}

/**
 * A week 1 model: no cache, each feed runs every token so far. Its tensors, the token ids included, live on
 * the default backend (a model on the GPU runs with the GPU as the default: registry.ts).
 */
export class Week1Session implements EngineModel {
  readonly cached = false;
  readonly decoding = null;
  constructor(
    readonly model: Week1Model,
    readonly description: string,
    readonly device = 'cpu',
  ) {}

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
    return withLearnerErrors(() => tc.tidy(() => positionsOf(tc.contiguous(this.model.forward(idsTensor(ids))), ids.length)));
  }
}

/** The cache of one layer of a week 2 model (chapter 2.1's KvCache, either solution's). */
export interface Week2Cache {
  readonly offset: number;
  rewind(n: number): void;
  dispose(): void;
}

/** What the engine needs of a week 2 model (packages/week2/src/qwen2-week2.ts and its solution). */
export interface Week2Model<Cache extends Week2Cache> {
  readonly config: ModelConfig;
  newCache(): Cache[];
  forward(ids: Tensor, offset: number, cache: Cache[]): Tensor;
}

/** A week 2 model: a KV cache per layer, each feed runs only the new tokens (on the default backend, as week 1's). */
export class Week2Session<Cache extends Week2Cache> implements EngineModel {
  readonly cached = true;
  constructor(
    readonly model: Week2Model<Cache>,
    readonly description: string,
    readonly device = 'cpu',
  ) {}

  get decoding(): DecodingModel<Cache> {
    return this.model;
  }

  get config(): ModelConfig {
    return this.model.config;
  }

  newSession(): Session {
    const model = this.model;
    let cache: Cache[] | null = withLearnerErrors(() => model.newCache());
    const tokens: number[] = [];
    return {
      tokens,
      feed(ids) {
        if (!cache) throw new Error('Session: used after dispose');
        const layers = cache;
        try {
          const logits = withLearnerErrors(() =>
            tc.tidy(() => {
              const all = model.forward(idsTensor(ids), tokens.length, layers); // [1, L, V]
              return tc.contiguous(tc.slice(all, [null, -1])); // [1, V]
            }),
          );
          tokens.push(...ids);
          return logits;
        } catch (err) {
          // A pass that failed part-way has appended to some layers' caches only: take those tokens back out.
          for (const c of layers) if (c.offset > tokens.length) c.rewind(c.offset - tokens.length);
          throw err;
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
    const cache = withLearnerErrors(() => this.model.newCache());
    try {
      return withLearnerErrors(() => tc.tidy(() => positionsOf(tc.contiguous(this.model.forward(idsTensor(ids), 0, cache)), ids.length)));
    } finally {
      for (const c of cache) c.dispose();
    }
  }
}
