// The mixture-of-experts MLP of Qwen2-MoE for the chapter models, computed where its input is (a GPU
// included): the router's top-k choices become a dense weight per token and expert, on the device, and every
// expert runs on every token, its output scaled by its weight (0 for an expert the token did not choose).
//
//   p        = softmax(x @ router.T)                                 [T, E]
//   top      = the k largest p of each token (renormalised if norm_topk_prob), in descending order
//   weight   = top scattered back to [T, E] (0 elsewhere)
//   out      = sum over e of weight[:, e] * expert_e(x)  +  sigmoid(x @ shared_gate.T) * shared_expert(x)
//
// The engine's sparse block (model/moe.ts) groups the tokens by expert on the host, running E / k times less
// expert work, but it reads the routing back to the CPU; this one reads nothing back, which is what a model
// on the GPU needs, and for the small MoE models it serves the extra work is small. The experts are week 2's
// gated MLPs, so their projections are the chapter's (chapters 2.2 and 2.3 for quantized weights).
import * as tc from '@tiny-llm/tensor-core';
import type { ModelDir, Tensor } from '@tiny-llm/tensor-core';
import { Projection, Qwen2MLP, type LayerMlp } from '@tiny-llm/reference/week2';
import { isSparseLayer, Qwen2ModelWeek3 } from '@tiny-llm/reference/week3';

export class DenseMoe implements LayerMlp {
  constructor(
    /** x -> router logits [..., E]. */
    readonly router: Projection,
    readonly experts: readonly Qwen2MLP[],
    /** k: experts per token. */
    readonly numExpertsPerTok: number,
    readonly normTopkProb: boolean,
    /** The expert every token runs, scaled by sigmoid(sharedGate(x)) (absent in some models). */
    readonly shared?: { mlp: Qwen2MLP; gate: Projection },
  ) {}

  /** The block of layer `layer` of a Qwen2-MoE checkpoint, or undefined for a layer whose MLP is dense. */
  static forLayer(modelDir: ModelDir, layer: number): DenseMoe | undefined {
    const { config } = modelDir;
    if (!config.moe || !isSparseLayer(config, layer)) return undefined;
    const prefix = `model.layers.${layer}.mlp`;
    const projection = (name: string) => new Projection(modelDir.linear(name).weight);
    const mlp = (p: string) => new Qwen2MLP(projection(`${p}.gate_proj`), projection(`${p}.up_proj`), projection(`${p}.down_proj`));
    const experts = Array.from({ length: config.moe.numExperts }, (_, e) => mlp(`${prefix}.experts.${e}`));
    const shared = modelDir.has(`${prefix}.shared_expert_gate.weight`)
      ? { mlp: mlp(`${prefix}.shared_expert`), gate: projection(`${prefix}.shared_expert_gate`) }
      : undefined;
    return new DenseMoe(projection(`${prefix}.gate`), experts, config.moe.numExpertsPerTok, config.moe.normTopkProb, shared);
  }

  /** x [..., hidden] -> [..., hidden] float32. */
  forward(x: Tensor): Tensor {
    return tc.tidy(() => {
      const numExperts = this.experts.length;
      const probs = tc.softmax(tc.astype(this.router.forward(x), 'float32'), -1); // [..., E]
      const { values, indices } = tc.topk(probs, this.numExpertsPerTok); // [..., k], largest first
      const top = this.normTopkProb ? tc.div(values, tc.sum(values, -1, { keepdims: true })) : values;
      // [..., k, E]: 1 where choice j is expert e; summed over the choices, each token's weight of each expert.
      const experts = tc.arange(0, numExperts, 1, { device: x.backend });
      const chosen = tc.astype(tc.equal(tc.expandDims(indices, -1), experts), 'float32');
      const weight = tc.sum(tc.mul(chosen, tc.expandDims(top, -1)), -2); // [..., E]
      const column = (e: number) => tc.slice(weight, [...x.shape.slice(0, -1).map(() => null), [e, e + 1]]);
      let out = tc.mul(this.experts[0].forward(x), column(0));
      for (let e = 1; e < numExperts; e++) out = tc.add(out, tc.mul(this.experts[e].forward(x), column(e)));
      if (this.shared) out = tc.add(out, tc.mul(this.shared.mlp.forward(x), tc.sigmoid(this.shared.gate.forward(x))));
      return out;
    });
  }
}

/**
 * The engine's model on a GPU: the reference week 3 model (week 2's, for a dense checkpoint) with DenseMoe in the
 * sparse layers of Qwen2-MoE, where chapter 3.3's block would read the routing back.
 */
export class DeviceQwen2 extends Qwen2ModelWeek3 {
  protected override mlpOf(modelDir: ModelDir, i: number): LayerMlp {
    return DenseMoe.forLayer(modelDir, i) ?? super.mlpOf(modelDir, i);
  }

  /** How messages name it. */
  static describe(modelDir: ModelDir): string {
    return modelDir.config.moe ? "the reference week 3 model with the engine's mixture of experts" : 'the reference week 2 model';
  }
}
