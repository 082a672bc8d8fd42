// One rank's shard of a model's weights, by their Hugging Face names: the engine's Qwen2Model is built from it
// as from the checkpoint of a model with 1/N of the heads and of the MLP columns (chapter 3.6's split:
// column-parallel q/k/v and gate/up, row-parallel o_proj and down_proj, whose bias stays on rank 0). The
// experts of Qwen2-MoE split the same way, each along its own columns; the routers, norms, embedding and
// output head are every rank's whole.
import type { ModelConfig } from '@tiny-llm/tensor-core';
import { checkTensorParallel, shardRange, sliceColumns, sliceRows, type RankOf } from '@tiny-llm/reference/week3';
import type { Weight } from '../model/linear.ts';
import type { WeightSource } from '../model/qwen2.ts';

/** Rows of the rank's output features: q/k/v (weights and biases) and the MLPs' gate/up, experts' included. */
const COLUMN_PARALLEL = /\.(self_attn\.[qkv]_proj|gate_proj|up_proj)\.(weight|bias)$/;
/** Columns of the rank's input features: o_proj and the MLPs' down_proj. */
const ROW_PARALLEL = /\.(self_attn\.o_proj|down_proj)\.weight$/;
/** Their biases are added once, after the sum: on rank 0 only. */
const ROW_PARALLEL_BIAS = /\.(self_attn\.o_proj|down_proj)\.bias$/;

/** The shape of one rank's model: the heads and the MLP columns divided by N. */
export function rankConfig(config: ModelConfig, worldSize: number): ModelConfig {
  checkTensorParallel(config, worldSize);
  const moe = config.moe && {
    ...config.moe,
    moeIntermediateSize: config.moe.moeIntermediateSize / worldSize,
    sharedExpertIntermediateSize: config.moe.sharedExpertIntermediateSize / worldSize,
  };
  return {
    ...config,
    numAttentionHeads: config.numAttentionHeads / worldSize,
    numKeyValueHeads: config.numKeyValueHeads / worldSize,
    intermediateSize: config.intermediateSize / worldSize,
    moe,
  };
}

/** Rank `at.rank`'s shard of every weight of `weight`, by name. */
export function shardWeights(weight: WeightSource, at: RankOf): WeightSource {
  const rows = (w: Weight) => {
    const [start, end] = shardRange(w.shape[0], at);
    return sliceRows(w, start, end);
  };
  const columns = (w: Weight) => {
    const [start, end] = shardRange(w.shape[1], at);
    return sliceColumns(w, start, end);
  };
  return (name) => {
    const w = weight(name);
    if (!w) return w;
    if (COLUMN_PARALLEL.test(name)) return rows(w);
    if (ROW_PARALLEL.test(name)) return columns(w);
    if (ROW_PARALLEL_BIAS.test(name)) return at.rank === 0 ? w : undefined;
    return w;
  };
}
