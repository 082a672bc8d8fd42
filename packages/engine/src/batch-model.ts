// The engine's model as the course's scheduler (chapter 2.6's Scheduler) drives it: a request's cache is the
// engine's cache of each layer, a prefill runs its chunk through the fused model, and a decode step runs the
// B requests' tokens through the projections together and through attention row by row, each on its own
// cache in place (Qwen2Model.decodeRows): no padding and no copy of the caches, unlike the course's
// BatchingKvCache, which makes the batch's keys one tensor so that the plain model can stay unchanged.
import * as tc from '@tiny-llm/tensor-core';
import type { Tensor } from '@tiny-llm/tensor-core';
import type { BatchModel } from '@tiny-llm/reference/week2';
import type { DecodeKvCache } from './model/kv-cache.ts';
import type { Qwen2Model } from './model/qwen2.ts';

export class EngineBatchModel implements BatchModel<DecodeKvCache[]> {
  constructor(readonly model: Qwen2Model) {}

  get vocabSize(): number {
    return this.model.config.vocabSize;
  }

  get maxPositions(): number {
    return this.model.config.maxPositionEmbeddings;
  }

  newRequestCache(): DecodeKvCache[] {
    return this.model.newCache();
  }

  prefill(ids: readonly number[], offset: number, cache: DecodeKvCache[]): Tensor {
    const x = tc.tensor(Int32Array.from(ids), { dtype: 'int32', shape: [1, ids.length] });
    try {
      return this.model.forwardLastLogits(x, cache, offset);
    } finally {
      x.dispose();
    }
  }

  decode(tokens: readonly number[], positions: readonly number[], caches: readonly DecodeKvCache[][]): Tensor {
    caches.forEach((c, i) => {
      if (c[0].offset !== positions[i]) throw new RangeError(`EngineBatchModel.decode: row ${i} is at position ${positions[i]}, its cache holds ${c[0].offset} tokens`);
    });
    return this.model.decodeRows(tokens, caches);
  }

  release(cache: DecodeKvCache[]): void {
    for (const layer of cache) layer.dispose();
  }
}
