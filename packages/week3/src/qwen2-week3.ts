// Chapter 3.3: the week 2 model running Qwen2-MoE. Attention, the KV cache and the loading are week 2's
// (Qwen2ModelWeek2, reused, not copied); the sparse layers get a mixture-of-experts block (moe.ts) where
// week 2 has its dense MLP.
import * as tc from '@tiny-llm/tensor-core';
import type { ModelConfig, ModelDir } from '@tiny-llm/tensor-core';
import { projectionOf, Qwen2MLP, Qwen2ModelWeek2, type LayerMlp, type Qwen2Week2Options } from '@tiny-llm/week2';
import { Qwen2MoeBlock } from './moe.ts';

/** The model types week 3 runs: week 2's and Qwen2-MoE. */
const WEEK3_MODEL_TYPES = ['qwen2', 'qwen3', 'qwen2_moe'];

/** Layer i of a Qwen2-MoE config is sparse unless listed in mlp_only_layers or off the decoder_sparse_step grid. */
export function isSparseLayer(config: ModelConfig, i: number): boolean {
  const moe = config.moe;
  if (!moe || moe.numExperts === 0) return false;
  return !moe.mlpOnlyLayers.includes(i) && (i + 1) % moe.decoderSparseStep === 0;
}

/** Qwen2, Qwen3 and Qwen2-MoE with a KV cache per layer. */
export class Qwen2ModelWeek3 extends Qwen2ModelWeek2 {
  static override load(dir: string, options: Qwen2Week2Options = {}): Qwen2ModelWeek3 {
    return new Qwen2ModelWeek3(tc.openModelDir(dir), options);
  }

  protected override modelTypes(): readonly string[] {
    return WEEK3_MODEL_TYPES;
  }

  /** A sparse layer's MLP is a Qwen2MoeBlock of the checkpoint's experts (Hugging Face layout); a dense one week 2's. */
  protected override mlpOf(modelDir: ModelDir, i: number): LayerMlp {
    const config = modelDir.config;
    if (!isSparseLayer(config, i)) return super.mlpOf(modelDir, i);
    const moe = config.moe!;
    const p = `model.layers.${i}.mlp`;
    const gated = (prefix: string) =>
      new Qwen2MLP(
        projectionOf(modelDir, `${prefix}.gate_proj`),
        projectionOf(modelDir, `${prefix}.up_proj`),
        projectionOf(modelDir, `${prefix}.down_proj`),
      );
    const shared = moe.sharedExpertIntermediateSize > 0;
    return new Qwen2MoeBlock({
      hiddenSize: config.hiddenSize,
      numExpertsPerTok: moe.numExpertsPerTok,
      normTopkProb: moe.normTopkProb,
      router: projectionOf(modelDir, `${p}.gate`),
      experts: Array.from({ length: moe.numExperts }, (_, e) => gated(`${p}.experts.${e}`)),
      sharedExpert: shared ? gated(`${p}.shared_expert`) : undefined,
      sharedExpertGate: shared ? projectionOf(modelDir, `${p}.shared_expert_gate`) : undefined,
      name: p,
    });
  }
}
