// Chapter 3.6: tensor parallelism, Megatron-style. The model is split over N ranks; each holds 1/N of every
// layer and computes 1/N of its work, and the ranks add up their partial results twice per layer.
//
// A linear layer y = x @ W.T (W [out, in]) splits two ways:
// - column-parallel: rank r keeps rows [r out/N, (r+1) out/N) of W (its output features): it computes its
//   slice of y from the whole x. No communication; the bias is split the same way.
// - row-parallel: rank r keeps columns [r in/N, (r+1) in/N) of W (its input features): from its slice of x it
//   computes a partial y, and y is the sum of the N partials (an all-reduce). The bias belongs to the sum, so
//   only rank 0 keeps it; kept on every rank, the sum would count it N times.
//
// In a decoder layer, q/k/v (and the MLP's gate/up) are column-parallel and o_proj (down_proj) row-parallel:
// each rank attends with its own heads (the MLP's own columns) from the output of the column-parallel layer,
// which is exactly the input slice its row-parallel layer needs. Nothing crosses ranks in between, and each
// half of the layer ends with one all-reduce. Heads are split in contiguous blocks, query and kv heads
// alike: query head j reads kv head floor(j / (H / Hkv)) (grouped-query attention), so rank r's query heads
// [r H/N, (r+1) H/N) read exactly its kv heads [r Hkv/N, (r+1) Hkv/N).
//
// The embedding, the final norm and the output head are every rank's whole: each rank looks up the token ids
// itself (no hidden state is sent to start a pass), and after the last all-reduce every rank holds the same
// hidden state, so every rank computes the same logits (the engine's own split keeps the head on rank 0 only).
import * as tc from '@tiny-llm/tensor-core';
import type { LinearWeights, ModelConfig, ModelDir, Tensor } from '@tiny-llm/tensor-core';
import type { RMSNorm } from '../week1/index.ts';
import {
  Projection,
  Qwen2MLP,
  Qwen2ModelWeek2,
  Qwen2MultiHeadAttention,
  Qwen2TransformerBlock,
  type AttentionCache,
  type Qwen2Shape,
  type Weight,
} from '../week2/index.ts';

/** A rank's place in its group. */
export interface RankOf {
  rank: number;
  worldSize: number;
}

/** Sums a partial result over the ranks: every rank passes its partial and gets the same sum back. */
export type AllReduce = (partial: Tensor) => Tensor;

/** A layer's attention projections, as the checkpoint stores them (ModelDir.linear) or as a rank's shard of them. */
export interface AttentionWeights {
  q: LinearWeights;
  k: LinearWeights;
  v: LinearWeights;
  o: LinearWeights;
}

/** A layer's MLP projections, whole or a rank's shard. */
export interface MlpWeights {
  gate: LinearWeights;
  up: LinearWeights;
  down: LinearWeights;
}

/**
 * Checks that a model splits over `worldSize` ranks: every head, kv head and MLP column count must divide
 * evenly. Throws an error that names the count that does not.
 */
export function checkTensorParallel(config: ModelConfig, worldSize: number): void {
  if (!Number.isInteger(worldSize) || worldSize < 1)
    throw new RangeError(`tensor parallelism: the number of ranks must be an integer >= 1, got ${worldSize}`);
  const counts: [string, number][] = [
    ['num_attention_heads', config.numAttentionHeads],
    ['num_key_value_heads', config.numKeyValueHeads],
    ['intermediate_size', config.intermediateSize],
  ];
  if (config.moe) {
    counts.push(['moe_intermediate_size', config.moe.moeIntermediateSize]);
    if (config.moe.sharedExpertIntermediateSize > 0)
      counts.push(['shared_expert_intermediate_size', config.moe.sharedExpertIntermediateSize]);
  }
  for (const [name, count] of counts) {
    if (count % worldSize !== 0) {
      throw new RangeError(
        `tensor parallelism over ${worldSize} ranks: the model's ${name} ${count} does not divide by ${worldSize} (each rank takes an equal share)`,
      );
    }
  }
}

/** The share of `total` (heads, rows, columns) that a rank owns: [r total / N, (r + 1) total / N). */
export function shardRange(total: number, { rank, worldSize }: RankOf): [number, number] {
  if (total % worldSize !== 0) throw new RangeError(`shardRange: ${total} does not divide by ${worldSize} ranks`);
  return [(rank * total) / worldSize, ((rank + 1) * total) / worldSize];
}

/** Rows [start, end) of a weight [out, in] as stored: a view, quantized or not. */
export function sliceRows(weight: Weight, start: number, end: number): Weight {
  const rows = (t: Tensor) => tc.slice(t, [[start, end]]);
  if (!(weight instanceof tc.QuantizedWeight)) return rows(weight);
  return new tc.QuantizedWeight(rows(weight.weight), rows(weight.scales), rows(weight.biases), weight.groupSize, weight.bits);
}

/**
 * Columns [start, end) of a weight [out, in] as stored, copied (a column block is strided in the file). A
 * quantized weight keeps its packed values; when the cut falls inside its groups (o_proj of a model whose
 * heads per rank span half a group), the shard gets smaller groups that repeat the scale and bias of the
 * group they come from, which dequantize to the same values.
 */
export function sliceColumns(weight: Weight, start: number, end: number): Weight {
  if (!(weight instanceof tc.QuantizedWeight)) return tc.contiguous(tc.slice(weight, [null, [start, end]]));
  const { groupSize, bits } = weight;
  const group = [128, 64, 32].find((g) => groupSize % g === 0 && start % g === 0 && end % g === 0);
  if (group === undefined) {
    throw new RangeError(
      `sliceColumns: columns [${start}, ${end}) of ${weight.toString()} do not fall on groups of 32 or more values ` +
        '(the smallest quantization group): this model cannot be split over that many ranks',
    );
  }
  const words = tc.contiguous(tc.slice(weight.weight, [null, [(start * bits) / 32, (end * bits) / 32]]));
  // New group j covers columns start + j * group.., inside the old group floor((start + j * group) / groupSize).
  const from = Array.from({ length: (end - start) / group }, (_, j) => Math.floor((start + j * group) / groupSize));
  const groups = tc.tensor(Int32Array.from(from), { dtype: 'int32' });
  const params = (t: Tensor) => tc.contiguous(tc.take(t, groups, 1));
  return new tc.QuantizedWeight(words, params(weight.scales), params(weight.biases), group, bits);
}

/** Rank r's shard of a column-parallel layer: its rows of the weight (its output features), and of the bias. */
export function columnParallel({ weight, bias }: LinearWeights, at: RankOf): LinearWeights {
  const [start, end] = shardRange(weight.shape[0], at);
  return { weight: sliceRows(weight, start, end), bias: bias && tc.slice(bias, [[start, end]]) };
}

/** Rank r's shard of a row-parallel layer: its columns of the weight (its input features); the bias on rank 0 only. */
export function rowParallel({ weight, bias }: LinearWeights, at: RankOf): LinearWeights {
  const [start, end] = shardRange(weight.shape[1], at);
  return { weight: sliceColumns(weight, start, end), bias: at.rank === 0 ? bias : null };
}

/**
 * Rank r's part of a layer's attention: its block of query heads, the kv heads those read, and the columns of
 * o_proj that take their outputs. Returns the shard's weights and its shape (H / N query heads, Hkv / N kv
 * heads), which week 2's attention runs as it is.
 */
export function shardAttention(full: AttentionWeights, shape: Qwen2Shape, at: RankOf): { weights: AttentionWeights; shape: Qwen2Shape } {
  const weights = {
    q: columnParallel(full.q, at),
    k: columnParallel(full.k, at),
    v: columnParallel(full.v, at),
    o: rowParallel(full.o, at),
  };
  return { weights, shape: { ...shape, numHeads: shape.numHeads / at.worldSize, numKvHeads: shape.numKvHeads / at.worldSize } };
}

/** Rank r's part of the MLP: its columns of gate and up (rows of their weights), the matching columns of down. */
export function shardMlp(full: MlpWeights, at: RankOf): MlpWeights {
  return { gate: columnParallel(full.gate, at), up: columnParallel(full.up, at), down: rowParallel(full.down, at) };
}

/**
 * A decoder layer on one rank: week 2's, with attention over the rank's heads and the MLP over its columns,
 * each giving a partial result that the all-reduce sums over the ranks before the residual add. Every rank then
 * holds the same hidden state for the next layer.
 */
export class TensorParallelBlock extends Qwen2TransformerBlock {
  constructor(
    selfAttn: Qwen2MultiHeadAttention,
    mlp: Qwen2MLP,
    inputLayerNorm: RMSNorm,
    postAttentionLayerNorm: RMSNorm,
    readonly allReduce: AllReduce,
  ) {
    super(selfAttn, mlp, inputLayerNorm, postAttentionLayerNorm);
  }

  override forward(x: Tensor, offsets: readonly number[], cache: AttentionCache): Tensor {
    const h = tc.add(x, this.allReduce(this.selfAttn.forward(this.inputLayerNorm.forward(x), offsets, cache)));
    return tc.add(h, this.allReduce(this.mlp.forward(this.postAttentionLayerNorm.forward(h))));
  }
}

export interface TensorParallelOptions extends RankOf {
  allReduce: AllReduce;
}

/** A week 2 projection as the weights it holds, and back. */
const weightsOf = (p: Projection): LinearWeights => ({ weight: p.weight, bias: p.bias ?? null });
const projectionOf = ({ weight, bias }: LinearWeights) => new Projection(weight, bias ?? undefined);

/** Rank r's part of a whole week 2 decoder layer, with your shardAttention and shardMlp. */
function shardBlock(block: Qwen2TransformerBlock, index: number, at: RankOf, allReduce: AllReduce): TensorParallelBlock {
  const { selfAttn, mlp } = block;
  if (!(mlp instanceof Qwen2MLP)) {
    throw new Error(
      `layer ${index} is a mixture of experts: this chapter splits dense MLPs (the engine's --tensor-parallel splits experts too)`,
    );
  }
  const { q, k, v, o, qNorm, kNorm } = selfAttn.weights;
  const attention = shardAttention({ q: weightsOf(q), k: weightsOf(k), v: weightsOf(v), o: weightsOf(o) }, selfAttn.shape, at);
  const w = attention.weights;
  const weights = { q: projectionOf(w.q), k: projectionOf(w.k), v: projectionOf(w.v), o: projectionOf(w.o), qNorm, kNorm };
  const mlpShard = shardMlp({ gate: weightsOf(mlp.gate), up: weightsOf(mlp.up), down: weightsOf(mlp.down) }, at);
  return new TensorParallelBlock(
    new Qwen2MultiHeadAttention(attention.shape, weights, selfAttn.rope, selfAttn.options),
    new Qwen2MLP(projectionOf(mlpShard.gate), projectionOf(mlpShard.up), projectionOf(mlpShard.down)),
    block.inputLayerNorm,
    block.postAttentionLayerNorm,
    allReduce,
  );
}

/**
 * One rank's share of Qwen2 (or Qwen3): week 2's model, each layer replaced by the rank's part of it. Its
 * forward pass (week 2's) is run by every rank with the same ids; each appends to its own caches (of its kv
 * heads) and returns the same logits.
 */
export class TensorParallelQwen2 extends Qwen2ModelWeek2 {
  readonly at: RankOf;

  constructor(modelDir: ModelDir, { allReduce, ...at }: TensorParallelOptions) {
    checkTensorParallel(modelDir.config, at.worldSize);
    if (!Number.isInteger(at.rank) || at.rank < 0 || at.rank >= at.worldSize)
      throw new RangeError(`TensorParallelQwen2: rank ${at.rank} is not in [0, ${at.worldSize})`);
    // Week 2's model over the whole checkpoint (its weights are views of the mapped files), then each layer split.
    super(modelDir);
    this.at = at;
    this.layers.forEach((block, i) => (this.layers[i] = shardBlock(block, i, at, allReduce)));
  }

  /** Rank `options.rank`'s share of the model in `dir`, all-reducing through `options.allReduce`. */
  static loadShard(dir: string, options: TensorParallelOptions): TensorParallelQwen2 {
    return new TensorParallelQwen2(tc.openModelDir(dir), options);
  }
}
