// Chapter 3.3: mixture of experts, the sparse MLP of Qwen2-MoE (Qwen1.5-MoE-A2.7B, the demo tiny-qwen2-moe-py).
//
// A router scores every token against E experts (each a small gated MLP); the token goes through only the
// top-k of them, and their outputs are mixed with the router's probabilities:
//
//   p        = softmax(x @ router.T)                      [T, E]
//   top      = the k largest p (renormalised to sum 1 only if norm_topk_prob)
//   out      = sum over the chosen e of p_e * expert_e(x)  +  sigmoid(x @ shared_gate.T) * shared_expert(x)
//
// The work is grouped by expert, not by token: every expert that some token chose runs once, as one matmul
// per projection over all of its tokens (gathered with take), so a prefill of T tokens costs at most E expert
// calls, not T * k. The weighted outputs are then gathered back into token order and summed over the k choices.
import * as tc from '@tiny-llm/tensor-core';
import type { ModelConfig, Tensor } from '@tiny-llm/tensor-core';
import { expectWeightShape, GatedMlp, Linear, type QuantizedPrecision, type Weight } from './linear.ts';

export interface ExpertWeights {
  /** [intermediate, hidden] */
  gate: Weight;
  /** [intermediate, hidden] */
  up: Weight;
  /** [hidden, intermediate] */
  down: Weight;
}

export interface Qwen2MoeBlockOptions {
  hiddenSize: number;
  /** k: experts per token (config num_experts_per_tok). */
  numExpertsPerTok: number;
  /** Renormalise the k routing weights to sum to 1 (config norm_topk_prob). */
  normTopkProb: boolean;
  /** The router, mlp.gate.weight [E, hidden]. */
  router: Weight;
  /** E experts, mlp.experts.{e}.{gate,up,down}_proj. */
  experts: ExpertWeights[];
  /** mlp.shared_expert.*: run on every token (optional: some MoE models have none). */
  sharedExpert?: ExpertWeights;
  /** mlp.shared_expert_gate.weight [1, hidden]: the shared expert's output is scaled by sigmoid(x @ it.T). */
  sharedExpertGate?: Weight;
  /** Names the layer in error messages. */
  name?: string;
  /** Fuse each expert's gate and up projections where possible (default true; see fuseWeights). */
  fuse?: boolean;
  /** Quantized weights multiply float32 activations (see Linear). */
  exact?: boolean;
}

/** The routing of T tokens: for token t, choice j < k, expert indices[t * k + j] with weight weights[t * k + j]. */
export interface Routing {
  indices: Int32Array;
  weights: Float32Array;
}

/**
 * Top-k routing from router probabilities [T, E] (row-major): the k largest probabilities of each token, in
 * descending order (the lower expert index first on ties, as torch.topk does on CPU), renormalised to sum to
 * 1 when `normalize`.
 */
export function routeTopK(probs: ArrayLike<number>, numTokens: number, numExperts: number, k: number, normalize: boolean): Routing {
  if (!Number.isInteger(k) || k < 1 || k > numExperts) throw new RangeError(`routeTopK: k = ${k} must be in [1, ${numExperts}]`);
  if (probs.length !== numTokens * numExperts) {
    throw new RangeError(`routeTopK: ${probs.length} probabilities for ${numTokens} tokens x ${numExperts} experts`);
  }
  const indices = new Int32Array(numTokens * k);
  const weights = new Float32Array(numTokens * k);
  const chosen = new Int32Array(k);
  for (let t = 0; t < numTokens; t++) {
    const row = t * numExperts;
    // Insertion into a sorted list of k: E is small (8 to 64), so this beats sorting the whole row.
    let n = 0;
    for (let e = 0; e < numExperts; e++) {
      const p = probs[row + e];
      if (n === k && !(p > probs[row + chosen[k - 1]])) continue;
      let i = n < k ? n++ : k - 1;
      while (i > 0 && p > probs[row + chosen[i - 1]]) {
        chosen[i] = chosen[i - 1];
        i--;
      }
      chosen[i] = e;
    }
    let total = 0;
    for (let j = 0; j < k; j++) total += probs[row + chosen[j]];
    for (let j = 0; j < k; j++) {
      indices[t * k + j] = chosen[j];
      weights[t * k + j] = normalize ? probs[row + chosen[j]] / total : probs[row + chosen[j]];
    }
  }
  return { indices, weights };
}

/** The sparse MLP of a Qwen2-MoE layer. */
export class Qwen2MoeBlock {
  readonly hiddenSize: number;
  readonly numExperts: number;
  readonly numExpertsPerTok: number;
  readonly normTopkProb: boolean;
  readonly router: Linear;
  readonly experts: GatedMlp[];
  readonly sharedExpert: GatedMlp | null;
  readonly sharedExpertGate: Linear | null;
  readonly name: string;

  constructor(options: Qwen2MoeBlockOptions) {
    const name = (this.name = options.name ?? 'Qwen2MoeBlock');
    const { hiddenSize, numExpertsPerTok } = options;
    const e = options.experts.length;
    if (e === 0) throw new RangeError(`${name}: needs at least one expert`);
    if (!Number.isInteger(numExpertsPerTok) || numExpertsPerTok < 1 || numExpertsPerTok > e) {
      throw new RangeError(`${name}: num_experts_per_tok (${numExpertsPerTok}) must be between 1 and the ${e} experts`);
    }
    expectWeightShape(`${name}.gate`, options.router, [e, hiddenSize]);
    this.hiddenSize = hiddenSize;
    this.numExperts = e;
    this.numExpertsPerTok = numExpertsPerTok;
    this.normTopkProb = options.normTopkProb;
    const precision = { exact: options.exact };
    this.router = new Linear(options.router, null, `${name}.gate`, precision);
    this.experts = options.experts.map((w, i) => {
      // Experts fuse gate and up only where that costs no copy: each runs on few tokens, and copying them
      // all would copy most of an MoE checkpoint at load.
      const mlp = new GatedMlp(w.gate, w.up, w.down, `${name}.experts.${i}`, { fuse: options.fuse, maxCopyBytes: 0, ...precision });
      if (mlp.inFeatures !== hiddenSize) {
        throw new RangeError(`${name}.experts.${i}: expects inputs of ${mlp.inFeatures} features, the model has ${hiddenSize}`);
      }
      return mlp;
    });
    if (!options.sharedExpert !== !options.sharedExpertGate) {
      throw new RangeError(`${name}: the shared expert and its gate (shared_expert_gate) come together or not at all`);
    }
    if (options.sharedExpert && options.sharedExpertGate) {
      const s = options.sharedExpert;
      this.sharedExpert = new GatedMlp(s.gate, s.up, s.down, `${name}.shared_expert`, { fuse: options.fuse, ...precision });
      if (this.sharedExpert.inFeatures !== hiddenSize) {
        throw new RangeError(`${name}.shared_expert: expects inputs of ${this.sharedExpert.inFeatures} features, the model has ${hiddenSize}`);
      }
      expectWeightShape(`${name}.shared_expert_gate`, options.sharedExpertGate, [1, hiddenSize]);
      this.sharedExpertGate = new Linear(options.sharedExpertGate, null, `${name}.shared_expert_gate`, precision);
    } else {
      this.sharedExpert = null;
      this.sharedExpertGate = null;
    }
  }

  /**
   * The block of layer `prefix` (e.g. "model.layers.3.mlp") from a weight source. Experts are read from the
   * Hugging Face layout (`experts.{e}.{gate,up,down}_proj.weight`) or, in MLX conversions, from stacked
   * `switch_mlp.{gate,up,down}_proj.weight` [E, ...] (each expert a view of its slice).
   */
  static fromWeights(
    config: ModelConfig,
    prefix: string,
    weight: (name: string) => Weight | undefined,
    options: { fuse?: boolean } & QuantizedPrecision = {},
  ): Qwen2MoeBlock {
    const moe = config.moe;
    if (!moe) throw new Error(`Qwen2MoeBlock: ${prefix}: the config has no mixture-of-experts settings (model_type ${config.modelType})`);
    const need = (name: string): Weight => {
      const w = weight(name);
      if (!w) throw new Error(`Qwen2MoeBlock: the checkpoint has no ${name}`);
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
    const hasShared = moe.sharedExpertIntermediateSize > 0 || weight(`${prefix}.shared_expert.gate_proj.weight`) !== undefined;
    const s = `${prefix}.shared_expert`;
    return new Qwen2MoeBlock({
      hiddenSize: config.hiddenSize,
      numExpertsPerTok: moe.numExpertsPerTok,
      normTopkProb: moe.normTopkProb,
      router: need(`${prefix}.gate.weight`),
      experts,
      sharedExpert: hasShared
        ? { gate: need(`${s}.gate_proj.weight`), up: need(`${s}.up_proj.weight`), down: need(`${s}.down_proj.weight`) }
        : undefined,
      sharedExpertGate: hasShared ? need(`${prefix}.shared_expert_gate.weight`) : undefined,
      name: prefix,
      fuse: options.fuse,
      exact: options.exact,
    });
  }

  /** The top-k routing of x [T, hidden] (float32). */
  route(x: Tensor): Routing {
    const probs = tc.tidy(() => tc.softmax(this.router.forward(x), -1).toArray());
    return routeTopK(probs, x.shape[0], this.numExperts, this.numExpertsPerTok, this.normTopkProb);
  }

  /** x [..., hidden] float32 -> [..., hidden] float32. */
  forward(x: Tensor): Tensor {
    if (x.shape[x.ndim - 1] !== this.hiddenSize) {
      throw new RangeError(`${this.name}: expected x of shape [..., ${this.hiddenSize}], got ${x.describe()}`);
    }
    return tc.tidy(() => {
      const lead = x.shape.slice(0, -1);
      const t = lead.reduce((a, b) => a * b, 1);
      const x2 = tc.reshape(x, [t, this.hiddenSize]);
      const k = this.numExpertsPerTok;
      const { indices, weights } = this.route(x2);

      // Group the T * k (token, choice) slots by expert.
      const counts = new Int32Array(this.numExperts);
      for (let i = 0; i < indices.length; i++) counts[indices[i]]++;
      const starts = new Int32Array(this.numExperts);
      for (let e = 1; e < this.numExperts; e++) starts[e] = starts[e - 1] + counts[e - 1];
      const fill = starts.slice();
      // slotRow[t * k + j]: the row of the expert-ordered outputs that holds choice j of token t.
      const slotRow = new Int32Array(t * k);
      const tokens = new Int32Array(t * k);
      const slotWeight = new Float32Array(t * k);
      for (let i = 0; i < indices.length; i++) {
        const row = fill[indices[i]]++;
        slotRow[i] = row;
        tokens[row] = Math.floor(i / k);
        slotWeight[row] = weights[i];
      }

      // One call of each chosen expert over all of its tokens, its output scaled by each token's weight.
      const parts: Tensor[] = [];
      for (let e = 0; e < this.numExperts; e++) {
        const n = counts[e];
        if (n === 0) continue;
        const rows = tokens.subarray(starts[e], starts[e] + n);
        const xe = n === t && isIdentity(rows) ? x2 : tc.take(x2, tc.tensor(rows, { dtype: 'int32', shape: [n] }));
        const ye = this.experts[e].forward(xe);
        const w = tc.tensor(slotWeight.subarray(starts[e], starts[e] + n), { shape: [n, 1] });
        parts.push(tc.mul(ye, w));
      }
      let out: Tensor;
      if (t === 1) {
        // Decode: the k outputs of the one token are just added.
        out = parts[0];
        for (let i = 1; i < parts.length; i++) out = tc.add(out, parts[i]);
      } else {
        // Back to token order, [T, k, hidden], then the sum over the k choices.
        const all = parts.length === 1 ? parts[0] : tc.concat(parts, 0);
        const gathered = tc.take(all, tc.tensor(slotRow, { dtype: 'int32', shape: [t * k] }));
        out = k === 1 ? gathered : tc.sum(tc.reshape(gathered, [t, k, this.hiddenSize]), 1);
      }

      if (this.sharedExpert && this.sharedExpertGate) {
        const gate = tc.sigmoid(this.sharedExpertGate.forward(x2)); // [T, 1]
        out = tc.add(out, tc.mul(this.sharedExpert.forward(x2), gate));
      }
      return tc.reshape(out, [...lead, this.hiddenSize]);
    });
  }
}

function isIdentity(rows: Int32Array): boolean {
  for (let i = 0; i < rows.length; i++) if (rows[i] !== i) return false;
  return true;
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
