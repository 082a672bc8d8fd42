// Chapter 3.3: mixture of experts, the sparse MLP of Qwen2-MoE (Qwen1.5-MoE-A2.7B, the demo tiny-qwen2-moe-py).
// Read docs/week3/3.3-mixture-of-experts.md, then replace each `throw` with your code. The block's
// constructor is given; the model that uses it (qwen2-week3.ts) is week 2's with these blocks in its sparse
// layers.
//
// A router scores every token against E experts (each a small gated MLP); the token goes through only the
// top k of them, and their outputs are mixed with the router's probabilities:
//
//   p    = softmax(x @ router.T)                                   [T, E]
//   top  = the k largest p of each token (renormalised to sum to 1 only if norm_topk_prob)
//   out  = sum over the chosen e of p_e * expert_e(x)  +  sigmoid(x @ shared_gate.T) * shared_expert(x)
//
// The work is grouped by expert, not by token: every expert that some token chose runs once, on all of its
// tokens, so a prefill of T tokens costs at most E expert calls, not T * k.
import type { Tensor } from '@tiny-llm/tensor-core';
import type { LayerMlp } from '@tiny-llm/week2';
import { NotImplemented } from '@tiny-llm/week1/not-implemented';

/** The routing of T tokens: token t's choice j < k is expert indices[t * k + j], with weight weights[t * k + j]. */
export interface Routing {
  numTokens: number;
  k: number;
  indices: Int32Array;
  weights: Float32Array;
}

/**
 * Top-k routing from router probabilities [T, E] (row-major: token t's probability of expert e is
 * probs[t * E + e]): the k largest probabilities of each token, in descending order, the lower expert index
 * first on ties (as torch.topk does). With `normalize` (norm_topk_prob), divide the k weights by their sum;
 * without, they stay the probabilities of the softmax over all E experts.
 * Reject a k that is not an integer in [1, E], and probabilities that are not T * E values, with a RangeError.
 */
export function routeTopK(probs: ArrayLike<number>, numTokens: number, numExperts: number, k: number, normalize: boolean): Routing {
  throw new NotImplemented('3.3', 'routeTopK');
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

/**
 * Sorts a routing's slots by expert, a counting sort: count the slots of each expert, their running sum gives
 * each expert's first row (starts), then place each slot i = t * k + j at the next free row of its expert,
 * recording its token (t), its weight, and rowOf[i]. An index outside 0..numExperts - 1 is a RangeError.
 */
export function groupByExpert(routing: Routing, numExperts: number): ExpertGroups {
  throw new NotImplemented('3.3', 'groupByExpert');
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

  /**
   * x [..., hidden] -> [..., hidden] float32. A RangeError naming this.name when x's last axis is not hiddenSize.
   *
   * 1. Flatten x to its T tokens [T, hidden]; p = tc.softmax(this.router.forward(x), -1), read back with
   *    toArray(): which expert runs which rows is decided on the host, by routeTopK and groupByExpert.
   * 2. For each expert e with tokens: gather its rows (tc.take), run this.experts[e].forward once on all of
   *    them, and scale each output row by its routing weight. Never one call per token: that is T * k small
   *    matmuls instead of at most E larger ones.
   * 3. Put the outputs back in token order (concatenate them in expert order, then tc.take with rowOf) and
   *    sum each token's k choices ([T, k, hidden] summed over axis 1).
   * 4. With a shared expert: add sharedExpert.forward(x) * sigmoid(sharedExpertGate.forward(x)).
   * Run it in a tc.tidy, so that the temporaries are freed.
   */
  forward(x: Tensor): Tensor {
    throw new NotImplemented('3.3', 'Qwen2MoeBlock.forward');
  }
}
