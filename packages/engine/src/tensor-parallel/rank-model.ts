// The model one rank of a tensor-parallel group runs, whoever's code it is: the engine's model built from the
// rank's shard (model/qwen2.ts with its all-reduce hook), or a solution's chapter 3.6 model
// (TensorParallelQwen2 of packages/week3 or of the reference). Both take the same commands: a forward pass or a
// decode step on caches the rank keeps, and the group returns rank 0's logits.
import * as tc from '@tiny-llm/tensor-core';
import type { ModelConfig, Tensor } from '@tiny-llm/tensor-core';
import type { RankOf } from '@tiny-llm/reference/week3';
import type { KvCache as ReferenceKvCache } from '@tiny-llm/reference/week2';
import type { KvCache as LearnerKvCache } from '@tiny-llm/week2';
import { withLearnerErrors } from '../errors.ts';
import type { DecodeKvCache } from '../model/kv-cache.ts';
import { modelDirWeights, Qwen2Model, type WeightSource } from '../model/qwen2.ts';
import { RandomWeights } from '../random-weights.ts';
import { idsTensor, positionsOf, type Week2Cache } from '../session.ts';
import type { GroupSpec, RankCode, WeightsSpec } from './protocol.ts';
import { rankConfig, shardWeights } from './shard.ts';

export interface RankModel<Cache> {
  /** The whole model's config. */
  readonly config: ModelConfig;
  newCache(): Cache;
  /** ids after `offset` cached tokens -> the logits, [1, vocab] if lastOnly else [L, vocab], on rank 0 (the others may return null). */
  forward(ids: readonly number[], offset: number, cache: Cache, lastOnly: boolean): Tensor | null;
  /** tokens[b] after the tokens in caches[b] -> the logits [B, vocab], on rank 0 (the others may return null). */
  decode(tokens: readonly number[], caches: readonly Cache[]): Tensor | null;
  /** Keeps the first `length` tokens of a cache. */
  truncate(cache: Cache, length: number): void;
  release(cache: Cache): void;
}

/** The chapter's and the engine's all-reduce on tensors: a float32 partial -> the sum over the ranks (a new tensor). */
export function tensorAllReduce(group: GroupAllReduce): (partial: Tensor) => Tensor {
  return (partial) => {
    if (partial.dtype !== 'float32') throw new TypeError(`all-reduce: expected a float32 partial sum, got ${partial.describe()}`);
    const data = partial.toArray() as Float32Array; // a copy: the sum is written into it
    group.allReduce(data);
    return tc.tensor(data, { shape: [...partial.shape] });
  };
}

/** The engine's model on a rank: Qwen2Model over the rank's shard, all-reducing after o_proj and down_proj. */
class EngineRank implements RankModel<DecodeKvCache[]> {
  constructor(
    readonly model: Qwen2Model,
    readonly config: ModelConfig,
    readonly rank: number,
  ) {}

  newCache(): DecodeKvCache[] {
    return this.model.newCache();
  }

  forward(ids: readonly number[], offset: number, cache: DecodeKvCache[], lastOnly: boolean): Tensor | null {
    const x = idsTensor(ids);
    try {
      if (this.rank === 0)
        return lastOnly ? this.model.forwardLastLogits(x, cache, offset) : positionsOf(this.model.forward(x, cache, offset), ids.length);
      this.model.advance(x, cache, offset);
      return null;
    } finally {
      x.dispose();
    }
  }

  decode(tokens: readonly number[], caches: readonly DecodeKvCache[][]): Tensor | null {
    if (this.rank === 0) return this.model.decodeRows(tokens, caches);
    this.model.advanceRows(tokens, caches);
    return null;
  }

  truncate(cache: DecodeKvCache[], length: number): void {
    for (const layer of cache) layer.rewind(layer.offset - length);
  }

  release(cache: DecodeKvCache[]): void {
    for (const layer of cache) layer.dispose();
  }
}

/** What the engine needs of chapter 3.6's TensorParallelQwen2 (either solution's). */
interface ChapterModel<Cache extends Week2Cache> {
  readonly config: ModelConfig;
  newCache(): Cache[];
  forward(ids: Tensor, offset: number, cache: Cache[]): Tensor;
}

/**
 * A solution's chapter 3.6 model on a rank: week 2's model split, so every rank computes the logits (the
 * group returns rank 0's). A decode step runs its rows one after the other.
 */
class ChapterRank<Cache extends Week2Cache> implements RankModel<Cache[]> {
  constructor(readonly model: ChapterModel<Cache>) {}

  get config(): ModelConfig {
    return this.model.config;
  }

  newCache(): Cache[] {
    return withLearnerErrors(() => this.model.newCache());
  }

  forward(ids: readonly number[], offset: number, cache: Cache[], lastOnly: boolean): Tensor {
    try {
      return withLearnerErrors(() =>
        tc.tidy(() => {
          const logits = this.model.forward(idsTensor(ids), offset, cache); // [1, L, V]
          return lastOnly ? tc.contiguous(tc.slice(logits, [null, -1])) : positionsOf(tc.contiguous(logits), ids.length);
        }),
      );
    } catch (err) {
      // A pass that failed part-way has appended to some layers' caches only: take those tokens back out.
      this.truncate(cache, offset);
      throw err;
    }
  }

  decode(tokens: readonly number[], caches: readonly Cache[][]): Tensor {
    const rows = tokens.map((token, b) => this.forward([token], caches[b][0].offset, caches[b], true));
    return tc.concat(rows, 0);
  }

  truncate(cache: Cache[], length: number): void {
    for (const layer of cache) if (layer.offset > length) layer.rewind(layer.offset - length);
  }

  release(cache: Cache[]): void {
    for (const layer of cache) layer.dispose();
  }
}

/** What the group does with chapter 3.6's SharedMemoryAllReduce (either solution's). */
export interface GroupAllReduce {
  allReduce(data: Float32Array): void;
  abort(): void;
  readonly aborted: boolean;
}

/** SharedMemoryAllReduce's class: the group's memory, and rank `rank`'s view of it. */
export interface GroupAllReduceClass {
  new (shared: SharedArrayBuffer, rank: number, worldSize: number): GroupAllReduce;
  allocate(worldSize: number, slotSize: number): SharedArrayBuffer;
}

/** The all-reduce of the code a group runs: the learner's, or the reference's (the engine's). */
export async function allReduceClass(code: RankCode): Promise<GroupAllReduceClass> {
  return code === 'learner'
    ? (await import('@tiny-llm/week3')).SharedMemoryAllReduce
    : (await import('@tiny-llm/reference/week3')).SharedMemoryAllReduce;
}

/** The whole model's config and weights by name: a checkpoint's, or random weights of a config's shape. */
function openWeights(weights: WeightsSpec): { config: ModelConfig; weight: WeightSource } {
  if ('modelDir' in weights) {
    const md = tc.openModelDir(weights.modelDir);
    return { config: md.config, weight: modelDirWeights(md) };
  }
  return { config: weights.config, weight: new RandomWeights(weights.config, { dtype: weights.dtype, seed: weights.seed }).get };
}

/** Loads rank `at.rank`'s model of a group, all-reducing through `allReduce`. */
export async function loadRankModel(spec: GroupSpec, at: RankOf, allReduce: (partial: Tensor) => Tensor): Promise<RankModel<unknown>> {
  const { weights } = spec;
  if (spec.code !== 'engine' && !('modelDir' in weights))
    throw new Error('a chapter model loads from a model directory, not random weights');
  // One branch per solution: their models' caches are of different classes.
  if (spec.code === 'learner' && 'modelDir' in weights) {
    const { TensorParallelQwen2 } = await import('@tiny-llm/week3');
    return new ChapterRank<LearnerKvCache>(
      withLearnerErrors(() => TensorParallelQwen2.loadShard(weights.modelDir, { ...at, allReduce })),
    ) as RankModel<unknown>;
  }
  if (spec.code === 'reference' && 'modelDir' in weights) {
    const { TensorParallelQwen2 } = await import('@tiny-llm/reference/week3');
    return new ChapterRank<ReferenceKvCache>(TensorParallelQwen2.loadShard(weights.modelDir, { ...at, allReduce })) as RankModel<unknown>;
  }
  const { config, weight } = openWeights(weights);
  const model = Qwen2Model.fromWeights(rankConfig(config, at.worldSize), shardWeights(weight, at), {
    tensorParallel: { rank: at.rank, allReduce },
    exact: spec.exact,
  });
  return new EngineRank(model, config, at.rank) as RankModel<unknown>;
}
