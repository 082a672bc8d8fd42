// A session's one-token decode step, captured once as a CpuGraph (tensor-core's backend/cpu-graph.ts) and then
// replayed for each next token: the step's native calls (the embedding lookup, per layer the four projections
// and the attention kernel, the output head) without the JavaScript between them. On the demo model that
// JavaScript (op wrappers, output allocations, views, scopes, ~45 calls a token) took 0.3-0.4 ms of a 0.9-1.2 ms
// step; bench/decode.ts measures the step both ways.
//
// What a replay changes, and why the rest can stay as recorded:
// - the token: written into the graph's own input tensor, which the recorded embedding lookup reads;
// - the position: the argument of each attentionDecode call that says where the new key and value go and how
//   many cached positions to attend over (its binding checks it against the cache's capacity on every call);
// - the caches' counts of stored positions, advanced by one in JavaScript as the un-captured step does.
// Everything else a step reads keeps its buffer between steps: the weights; the KV buffers until the cache grows
// (every DecodeKvCache chunk, 256 positions: the graph is then captured again); the RoPE tables, grown at
// capture to cover the cache's capacity. The step's temporaries are the graph's own (CpuBackend.capture).
// Only steps whose calls do not depend on values qualify: no mixture-of-experts routing (it picks experts in
// JavaScript), only the fused decode kernels (the composed path writes the cache through views at a fixed row).
import * as tc from '@tiny-llm/tensor-core';
import type { Tensor } from '@tiny-llm/tensor-core';
import { DecodeKvCache, type LayerCache } from './kv-cache.ts';
import { GatedMlp } from './linear.ts';
import { engineKernels } from './native.ts';
import type { Qwen2Model } from './qwen2.ts';

/** attentionDecode(qkv, cos, sin, position, keys, values, out, ...): the index of `position` (native/attention_decode.cc). */
const POSITION_ARG = 3;

export class DecodeGraph {
  private constructor(
    private readonly model: Qwen2Model,
    private readonly caches: readonly DecodeKvCache[],
    private readonly graph: tc.CpuGraph<Tensor>,
    /** The graph's input, int32 [1, 1], and a view of its one value. */
    private readonly ids: Tensor,
    private readonly token: Int32Array,
    private readonly attentionCalls: readonly tc.NativeCall[],
    /** The caches' capacity and the RoPE tables when captured: the buffers the recorded calls read. */
    private readonly capacity: number,
    private readonly rope: tc.fast.RopeTables,
  ) {}

  /** Whether `model`'s decode steps can be captured at all (see the top of this file). */
  static supports(model: Qwen2Model): boolean {
    return (
      model.fusedKernels && model.layers.every((l) => l.mlp instanceof GatedMlp && l.selfAttn.decodeKernel && l.tensorParallel === null)
    );
  }

  /**
   * Runs the decode step of `token` after what `caches` hold, capturing it, and returns the graph (its logits
   * are the step's, see logits()); or null, having run nothing, when this step cannot be captured: a model
   * DecodeGraph.supports() turns down, or caches that must grow for it.
   */
  static capture(model: Qwen2Model, caches: readonly LayerCache[], token: number): DecodeGraph | null {
    if (!DecodeGraph.supports(model) || !caches.every((c) => c instanceof DecodeKvCache)) return null;
    const decodeCaches = caches as readonly DecodeKvCache[];
    const capacity = decodeCaches[0].capacity;
    if (!decodeCaches.every((c) => c.capacity === capacity && c.offset < capacity)) return null;
    const rope = model.ropeTables(capacity);
    const ids = tc.keep(tc.tensor(Int32Array.of(token), { dtype: 'int32', shape: [1, 1], device: tc.cpu }));
    let graph: tc.CpuGraph<Tensor>;
    try {
      graph = tc.cpu.capture(() => tc.keep(model.forwardLastLogits(ids, caches)));
    } catch (err) {
      ids.dispose();
      throw err;
    }
    const attention = engineKernels().attentionDecode;
    const attentionCalls = graph.calls.filter((c) => c.kernel === attention);
    if (attentionCalls.length !== model.layers.length) {
      throw new Error(`DecodeGraph: a decode step made ${attentionCalls.length} attention calls for ${model.layers.length} layers`);
    }
    const [buffer, meta] = ids.native();
    const view = new Int32Array(buffer, meta[0], 1);
    return new DecodeGraph(model, decodeCaches, graph, ids, view, attentionCalls, capacity, rope);
  }

  /** Whether the next step can be replayed: the caches and RoPE tables still have the recorded buffers and room. */
  canStep(): boolean {
    const position = this.caches[0].offset;
    return (
      this.model.ropeTables(this.capacity) === this.rope &&
      position < this.capacity &&
      this.caches.every((c) => c.capacity === this.capacity && c.offset === position)
    );
  }

  /** The decode step of `token` after what the caches hold (canStep() must be true). */
  step(token: number): void {
    const vocab = this.model.config.vocabSize;
    if (!(Number.isInteger(token) && token >= 0 && token < vocab)) {
      throw new RangeError(`Qwen2Model.forward: token id ${token} is outside the vocabulary (vocab_size ${vocab}: ids 0..${vocab - 1})`);
    }
    if (!this.canStep()) throw new Error('DecodeGraph.step: the caches or RoPE tables changed since the capture (check canStep())');
    const position = this.caches[0].offset;
    this.token[0] = token;
    for (const call of this.attentionCalls) call.args[POSITION_ARG] = position;
    this.graph.replay();
    for (const c of this.caches) c.commit(1);
  }

  /** The last step's logits [1, vocab], as a new tensor (the graph's own are overwritten by the next step). */
  logits(): Tensor {
    const src = this.graph.result;
    const out = tc.empty(src.shape, 'float32', tc.cpu);
    tc.cpu.unary('copy', src, out);
    return out;
  }

  /** Frees the graph's input and output (its temporaries go with it). */
  dispose(): void {
    this.ids.dispose();
    this.graph.result.dispose();
  }
}
