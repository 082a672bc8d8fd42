// Chapter 3.3: mixture of experts, the sparse MLP of Qwen2-MoE (Qwen1.5-MoE-A2.7B, the demo tiny-qwen2-moe-py).
//
// A router scores every token against E experts (each a small gated MLP); the token goes through only the
// top k of them, and their outputs are mixed with the router's probabilities:
//
//   p    = softmax(x @ router.T)                                   [T, E]
//   top  = the k largest p of each token (renormalised to sum to 1 only if norm_topk_prob)
//   out  = sum over the chosen e of p_e * expert_e(x)  +  sigmoid(x @ shared_gate.T) * shared_expert(x)
//
// The work is grouped by expert, not by token: every expert that some token chose runs once, as one matmul per
// projection over all of its tokens (gathered with take), so a prefill of T tokens costs at most E expert
// calls, not T * k. The weighted outputs are then put back in token order and summed over the k choices.
import * as tc from '@tiny-llm/tensor-core';
import type { Tensor } from '@tiny-llm/tensor-core';
import type { LayerMlp } from '../week2/index.ts';

/** The routing of T tokens: token t's choice j < k is expert indices[t * k + j], with weight weights[t * k + j]. */
export interface Routing {
  numTokens: number;
  k: number;
  indices: Int32Array;
  weights: Float32Array;
}

/**
 * Top-k routing from router probabilities [T, E] (row-major): the k largest probabilities of each token, in
 * descending order (the lower expert index first on ties, as torch.topk does on CPU), renormalised to sum to
 * 1 when `normalize`.
 */
export function routeTopK(probs: ArrayLike<number>, numTokens: number, numExperts: number, k: number, normalize: boolean): Routing {
  if (!Number.isInteger(k) || k < 1 || k > numExperts)
    throw new RangeError(`routeTopK: k = ${k} must be an integer in [1, ${numExperts}] (the experts)`);
  if (probs.length !== numTokens * numExperts) {
    throw new RangeError(`routeTopK: ${probs.length} probabilities for ${numTokens} tokens x ${numExperts} experts`);
  }
  const indices = new Int32Array(numTokens * k);
  const weights = new Float32Array(numTokens * k);
  const chosen = new Int32Array(k);
  for (let t = 0; t < numTokens; t++) {
    const row = t * numExperts;
    // Insertion into a sorted list of k: E is small (8 to 64), so this beats sorting the whole row. A later
    // expert displaces an earlier one only when strictly more likely, so ties keep the lower index first.
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
  return { numTokens, k, indices, weights };
}

/**
 * The T * k (token, choice) slots of a routing sorted by expert: rows starts[e] .. starts[e] + counts[e] - 1 are
 * expert e's, in token order.
 */
export interface ExpertGroups {
  /** Slots routed to each expert. */
  counts: Int32Array;
  /** Each expert's first row. */
  starts: Int32Array;
  /** The token of each row. */
  tokens: Int32Array;
  /** The routing weight of each row. */
  weights: Float32Array;
  /** rowOf[t * k + j]: the row that holds token t's choice j (to put the outputs back in token order). */
  rowOf: Int32Array;
}

/** Sorts a routing's slots by expert (a counting sort: one pass to count, one to place). */
export function groupByExpert(routing: Routing, numExperts: number): ExpertGroups {
  const { indices, weights, k } = routing;
  const counts = new Int32Array(numExperts);
  for (let i = 0; i < indices.length; i++) {
    const e = indices[i];
    if (!(e >= 0 && e < numExperts))
      throw new RangeError(`groupByExpert: slot ${i} is routed to expert ${e}, outside 0..${numExperts - 1}`);
    counts[e]++;
  }
  const starts = new Int32Array(numExperts);
  for (let e = 1; e < numExperts; e++) starts[e] = starts[e - 1] + counts[e - 1];
  const next = starts.slice();
  const tokens = new Int32Array(indices.length);
  const rowWeights = new Float32Array(indices.length);
  const rowOf = new Int32Array(indices.length);
  for (let i = 0; i < indices.length; i++) {
    const row = next[indices[i]]++;
    rowOf[i] = row;
    tokens[row] = Math.floor(i / k);
    rowWeights[row] = weights[i];
  }
  return { counts, starts, tokens, weights: rowWeights, rowOf };
}

export interface Qwen2MoeBlockOptions {
  hiddenSize: number;
  /** k: experts per token (config num_experts_per_tok). */
  numExpertsPerTok: number;
  /** Renormalise the k routing weights to sum to 1 (config norm_topk_prob). */
  normTopkProb: boolean;
  /** The router, mlp.gate: x [T, hidden] -> scores [T, E]. */
  router: LayerMlp;
  /** The E experts, mlp.experts.{e}: gated MLPs [n, hidden] -> [n, hidden]. */
  experts: LayerMlp[];
  /** mlp.shared_expert, run on every token (some MoE models have none)... */
  sharedExpert?: LayerMlp;
  /** ...and mlp.shared_expert_gate: x [T, hidden] -> [T, 1], its output scaled by sigmoid of that. */
  sharedExpertGate?: LayerMlp;
  /** Names the layer in error messages. */
  name?: string;
}

/** The sparse MLP of a Qwen2-MoE layer. The router, experts and shared expert are any modules with forward. */
export class Qwen2MoeBlock implements LayerMlp {
  readonly hiddenSize: number;
  readonly numExperts: number;
  readonly numExpertsPerTok: number;
  readonly normTopkProb: boolean;
  readonly router: LayerMlp;
  readonly experts: readonly LayerMlp[];
  readonly sharedExpert: LayerMlp | null;
  readonly sharedExpertGate: LayerMlp | null;
  readonly name: string;

  constructor(options: Qwen2MoeBlockOptions) {
    const name = (this.name = options.name ?? 'Qwen2MoeBlock');
    const e = options.experts.length;
    if (e === 0) throw new RangeError(`${name}: needs at least one expert`);
    const k = options.numExpertsPerTok;
    if (!Number.isInteger(k) || k < 1 || k > e)
      throw new RangeError(`${name}: num_experts_per_tok (${k}) must be between 1 and the ${e} experts`);
    if (!options.sharedExpert !== !options.sharedExpertGate) {
      throw new RangeError(`${name}: the shared expert and its gate (shared_expert_gate) come together or not at all`);
    }
    this.hiddenSize = options.hiddenSize;
    this.numExperts = e;
    this.numExpertsPerTok = k;
    this.normTopkProb = options.normTopkProb;
    this.router = options.router;
    this.experts = options.experts;
    this.sharedExpert = options.sharedExpert ?? null;
    this.sharedExpertGate = options.sharedExpertGate ?? null;
  }

  /** x [..., hidden] -> [..., hidden] float32. */
  forward(x: Tensor): Tensor {
    if (x.ndim < 1 || x.shape[x.ndim - 1] !== this.hiddenSize) {
      throw new RangeError(`${this.name}: expected x of shape [..., ${this.hiddenSize}], got ${x.describe()}`);
    }
    return tc.tidy(() => {
      const lead = x.shape.slice(0, -1);
      const t = lead.reduce((a, b) => a * b, 1);
      const x2 = tc.reshape(x, [t, this.hiddenSize]);
      const k = this.numExpertsPerTok;
      // The router's softmax over the experts, read back: which expert runs which rows is decided on the host.
      const probs = tc.softmax(this.router.forward(x2), -1).toArray();
      const groups = groupByExpert(routeTopK(probs, t, this.numExperts, k, this.normTopkProb), this.numExperts);

      // Each chosen expert once, on all of its tokens; its output rows scaled by their routing weights.
      const parts: Tensor[] = [];
      for (let e = 0; e < this.numExperts; e++) {
        const n = groups.counts[e];
        if (n === 0) continue;
        const rows = groups.starts[e];
        const xe = tc.take(x2, tc.tensor(groups.tokens.subarray(rows, rows + n), { dtype: 'int32', shape: [n] })); // [n, hidden]
        const we = tc.tensor(groups.weights.subarray(rows, rows + n), { shape: [n, 1] });
        parts.push(tc.mul(this.experts[e].forward(xe), we));
      }
      // Expert order -> token order, [T, k, hidden], then the sum over each token's k choices.
      const byExpert = parts.length === 1 ? parts[0] : tc.concat(parts, 0); // [T * k, hidden]
      const byToken = tc.take(byExpert, tc.tensor(groups.rowOf, { dtype: 'int32', shape: [t * k] }));
      let out = tc.sum(tc.reshape(byToken, [t, k, this.hiddenSize]), 1);

      if (this.sharedExpert && this.sharedExpertGate) {
        const gate = tc.sigmoid(this.sharedExpertGate.forward(x2)); // [T, 1]
        out = tc.add(out, tc.mul(this.sharedExpert.forward(x2), gate));
      }
      return tc.reshape(out, [...lead, this.hiddenSize]);
    });
  }
}
