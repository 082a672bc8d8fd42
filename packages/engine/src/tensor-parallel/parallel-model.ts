// A tensor-parallel group as the rest of the engine drives a model: an EngineModel (sessions for generate,
// chat, logits and bench) and a BatchModel (chapter 2.6's scheduler, for batch and serve). A sequence's cache
// lives on every rank of the group; after the group restarted from a failure it is gone, and a session builds
// it again from its tokens at its next feed.
import type { ModelConfig, Tensor } from '@tiny-llm/tensor-core';
import type { BatchModel } from '@tiny-llm/reference/week2';
import type { EngineModel, Session } from '../session.ts';
import { TensorParallelGroup, type CacheHandle } from './group.ts';
import type { GroupSpec } from './protocol.ts';

export class TensorParallelModel implements EngineModel {
  readonly cached = true;
  readonly device = 'cpu';
  /** Speculative decoding rewinds the target's caches in place; a group's caches live on its ranks. */
  readonly decoding = null;

  constructor(
    readonly group: TensorParallelGroup,
    readonly description: string,
  ) {}

  /** Starts a group of `spec.worldSize` ranks (see group.ts); `description` says what runs, for messages. */
  static async start(spec: GroupSpec, description: string): Promise<TensorParallelModel> {
    return new TensorParallelModel(await TensorParallelGroup.start(spec), description);
  }

  get config(): ModelConfig {
    return this.group.config;
  }

  newSession(): Session {
    const group = this.group;
    let cache = group.open();
    const tokens: number[] = [];
    return {
      tokens,
      feed(ids) {
        if (group.isLive(cache)) {
          const logits = group.forward(cache, ids, tokens.length, true);
          tokens.push(...ids);
          return logits;
        }
        // The cache went with the peers of a failed call: build it again from the tokens it held.
        cache = group.open();
        const logits = group.forward(cache, [...tokens, ...ids], 0, true);
        tokens.push(...ids);
        return logits;
      },
      truncate(n) {
        if (n >= tokens.length) return;
        if (group.isLive(cache)) group.truncate(cache, n);
        tokens.length = n;
      },
      dispose() {
        group.release(cache);
      },
    };
  }

  allLogits(ids: readonly number[]): Tensor {
    const cache = this.group.open();
    try {
      return this.group.forward(cache, ids, 0, false);
    } finally {
      this.group.release(cache);
    }
  }

  /** Stops the group's threads. */
  close(): Promise<void> {
    return this.group.close();
  }
}

/** The group under chapter 2.6's scheduler: a request's cache is its handle on every rank. */
export class TensorParallelBatchModel implements BatchModel<CacheHandle> {
  constructor(readonly group: TensorParallelGroup) {}

  get vocabSize(): number {
    return this.group.config.vocabSize;
  }

  get maxPositions(): number {
    return this.group.config.maxPositionEmbeddings;
  }

  newRequestCache(): CacheHandle {
    return this.group.open();
  }

  prefill(ids: readonly number[], offset: number, cache: CacheHandle): Tensor {
    return this.group.forward(cache, ids, offset, true);
  }

  decode(tokens: readonly number[], positions: readonly number[], caches: readonly CacheHandle[]): Tensor {
    return this.group.decode(caches, tokens, positions);
  }

  release(cache: CacheHandle): void {
    this.group.release(cache);
  }
}
