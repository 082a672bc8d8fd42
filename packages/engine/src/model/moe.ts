// The engine's Qwen2-MoE blocks. The block is chapter 3.3's (packages/reference/src/week3/moe.ts: the router's
// softmax, top-k, the tokens grouped by expert, the shared expert and its gate); what is the engine's own is
// what the experts are and where their weights come from:
// - each expert is a GatedMlp over its weights as stored (bf16 read in place, MLX-quantized through the
//   engine's quantized matmul), its gate and up fused where the checkpoint already stores them back to back;
// - MLX conversions stack the experts in switch_mlp.{gate,up,down}_proj [E, ...]: each expert is a view of its
//   slice, so nothing is copied at load.
import * as tc from '@tiny-llm/tensor-core';
import type { ModelConfig } from '@tiny-llm/tensor-core';
import { Qwen2MoeBlock } from '@tiny-llm/reference/week3';
import { expectWeightShape, GatedMlp, Linear, type QuantizedPrecision, type Weight } from './linear.ts';

interface ExpertWeights {
  gate: Weight;
  up: Weight;
  down: Weight;
}

/**
 * The block of layer `prefix` (e.g. "model.layers.3.mlp") from a weight source, in the Hugging Face layout
 * (`experts.{e}.{gate,up,down}_proj.weight`) or MLX's stacked `switch_mlp.{gate,up,down}_proj.weight` [E, ...].
 * options.fuse: false keeps each expert's gate and up apart (for comparisons); options.exact as Linear's.
 */
export function loadMoeBlock(
  config: ModelConfig,
  prefix: string,
  weight: (name: string) => Weight | undefined,
  options: { fuse?: boolean } & QuantizedPrecision = {},
): Qwen2MoeBlock {
  const moe = config.moe;
  if (!moe) throw new Error(`${prefix}: the config has no mixture-of-experts settings (model_type ${config.modelType})`);
  const { hiddenSize } = config;
  const need = (name: string): Weight => {
    const w = weight(name);
    if (!w) throw new Error(`the checkpoint has no ${name}`);
    return w;
  };
  const experts: ExpertWeights[] = [];
  if (!weight(`${prefix}.experts.0.gate_proj.weight`) && weight(`${prefix}.switch_mlp.gate_proj.weight`)) {
    const stacked = (proj: string) => need(`${prefix}.switch_mlp.${proj}.weight`);
    const [g, u, d] = [stacked('gate_proj'), stacked('up_proj'), stacked('down_proj')];
    for (let e = 0; e < moe.numExperts; e++) experts.push({ gate: expertSlice(g, e), up: expertSlice(u, e), down: expertSlice(d, e) });
  } else {
    for (let e = 0; e < moe.numExperts; e++) {
      const p = `${prefix}.experts.${e}`;
      experts.push({ gate: need(`${p}.gate_proj.weight`), up: need(`${p}.up_proj.weight`), down: need(`${p}.down_proj.weight`) });
    }
  }
  /** A gated MLP of `name` reading the hidden state. */
  const gatedMlp = (w: ExpertWeights, name: string, maxCopyBytes?: number) => {
    const mlp = new GatedMlp(w.gate, w.up, w.down, name, { fuse: options.fuse, maxCopyBytes, exact: options.exact });
    expectWeightShape(`${name}.gate_proj`, w.gate, [mlp.hiddenDim, hiddenSize]);
    return mlp;
  };
  const router = need(`${prefix}.gate.weight`);
  expectWeightShape(`${prefix}.gate`, router, [moe.numExperts, hiddenSize]);
  const s = `${prefix}.shared_expert`;
  const hasShared = moe.sharedExpertIntermediateSize > 0 || weight(`${s}.gate_proj.weight`) !== undefined;
  let sharedGate: Weight | undefined;
  if (hasShared) {
    sharedGate = need(`${prefix}.shared_expert_gate.weight`);
    expectWeightShape(`${prefix}.shared_expert_gate`, sharedGate, [1, hiddenSize]);
  }
  return new Qwen2MoeBlock({
    hiddenSize,
    numExpertsPerTok: moe.numExpertsPerTok,
    normTopkProb: moe.normTopkProb,
    router: new Linear(router, null, `${prefix}.gate`, { exact: options.exact }),
    // Experts fuse gate and up only where that costs no copy: each runs on few tokens, and copying them all
    // would copy most of an MoE checkpoint at load.
    experts: experts.map((w, e) => gatedMlp(w, `${prefix}.experts.${e}`, 0)),
    sharedExpert: hasShared
      ? gatedMlp({ gate: need(`${s}.gate_proj.weight`), up: need(`${s}.up_proj.weight`), down: need(`${s}.down_proj.weight`) }, s)
      : undefined,
    sharedExpertGate: sharedGate && new Linear(sharedGate, null, `${prefix}.shared_expert_gate`, { exact: options.exact }),
    name: prefix,
  });
}

/** Expert e of a stacked [E, out, in] weight: a view (for a quantized weight, views of its three parts). */
function expertSlice(w: Weight, e: number): Weight {
  if (w instanceof tc.QuantizedWeight) {
    return new tc.QuantizedWeight(
      tc.keep(tc.slice(w.weight, [e])),
      tc.keep(tc.slice(w.scales, [e])),
      tc.keep(tc.slice(w.biases, [e])),
      w.groupSize,
      w.bits,
    );
  }
  return tc.keep(tc.slice(w, [e]));
}
