// A session's one-token decode step, captured once as a CpuGraph (tensor-core's backend/cpu-graph.ts) and then
// replayed for each next token: the step's native calls (the embedding lookup, per layer the four projections
// and the attention kernel, the output head) without the JavaScript between them. On the demo model that
// JavaScript (op wrappers, output allocations, views, scopes, ~45 calls a token) took 0.3-0.4 ms of a 0.9-1.2 ms
// step; bench/decode.ts measures the step both ways. The scheduler's batched step over a page pool is captured
// the same way (BatchDecodeGraph, at the end).
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
import type { BlockTable } from '@tiny-llm/reference/week3';
import { DecodeKvCache, type LayerCache } from './kv-cache.ts';
import { GatedMlp } from './linear.ts';
import { engineKernels } from './native.ts';
import type { Qwen2Model } from './qwen2.ts';

/** attentionDecode(qkv, cos, sin, position, keys, values, out, ...): the index of `position` (native/attention_decode.cc). */
const POSITION_ARG = 3;
/** pagedAttentionDecode(qkv, cos, sin, positions, keyPages, valuePages, blockTables, out, ...): the same file. */
const PAGED_POSITIONS_ARG = 3;
const PAGED_TABLES_ARG = 6;

/** The int32 values of a tensor passed to a kernel (a [buffer, meta] native view), to write a step's inputs into. */
function int32Values(view: unknown, length: number): Int32Array {
  const [buffer, meta] = view as tc.NativeView;
  return new Int32Array(buffer, meta[0], length);
}

/** A captured step: the model, the graph, its input ids [B, 1] and the RoPE tables its calls read. */
interface Capture {
  model: Qwen2Model;
  graph: tc.CpuGraph<Tensor>;
  ids: Tensor;
  rope: tc.fast.RopeTables;
}

/**
 * What both kinds of graph hold and do: the captured step, its input token ids (the graph's own tensor, and a
 * view of its values to write the next tokens into), and the RoPE tables its calls read.
 */
abstract class CapturedStep {
  protected readonly model: Qwen2Model;
  protected readonly graph: tc.CpuGraph<Tensor>;
  protected readonly rope: tc.fast.RopeTables;
  private readonly ids: Tensor;
  private readonly tokens: Int32Array;

  protected constructor({ model, graph, ids, rope }: Capture) {
    this.model = model;
    this.graph = graph;
    this.rope = rope;
    this.ids = ids;
    this.tokens = int32Values(ids.native(), ids.shape[0]);
  }

  /**
   * Captures `step`, a forward pass over `ids` (kept by the graph from here on), and returns the graph with its
   * calls of the attention kernel `attention`, one per layer.
   */
  protected static captureStep(
    model: Qwen2Model,
    ids: Tensor,
    step: () => Tensor,
    attention: 'attentionDecode' | 'pagedAttentionDecode',
  ): { graph: tc.CpuGraph<Tensor>; attentionCalls: tc.NativeCall[] } {
    let graph: tc.CpuGraph<Tensor>;
    try {
      graph = tc.cpu.capture(() => tc.keep(step()));
    } catch (err) {
      ids.dispose();
      throw err;
    }
    const kernel = engineKernels()[attention];
    const attentionCalls = graph.calls.filter((c) => c.kernel === kernel);
    if (attentionCalls.length !== model.layers.length) {
      ids.dispose();
      graph.result.dispose();
      throw new Error(`a captured decode step made ${attentionCalls.length} ${attention} calls for ${model.layers.length} layers`);
    }
    return { graph, attentionCalls };
  }

  /** The graph's input: int32 [B, 1] holding `tokens`, on the CPU, kept. */
  protected static idsOf(tokens: readonly number[]): Tensor {
    return tc.keep(tc.tensor(Int32Array.from(tokens), { dtype: 'int32', shape: [tokens.length, 1], device: tc.cpu }));
  }

  /** Writes the tokens into the graph's input and makes the recorded calls. */
  protected replay(tokens: readonly number[]): void {
    this.model.checkTokenIds(tokens, (i) => (tokens.length > 1 ? ` of row ${i}` : ''));
    this.tokens.set(tokens);
    this.graph.replay();
  }

  /** The last step's logits [B, vocab], as a new tensor (the graph's own are overwritten by its next replay). */
  logits(): Tensor {
    const out = tc.empty(this.graph.result.shape, 'float32', tc.cpu);
    tc.cpu.unary('copy', this.graph.result, out);
    return out;
  }

  /** Frees the graph's input and output (its temporaries go with it). */
  dispose(): void {
    this.ids.dispose();
    this.graph.result.dispose();
  }
}

export class DecodeGraph extends CapturedStep {
  private constructor(
    capture: Capture,
    private readonly caches: readonly DecodeKvCache[],
    private readonly attentionCalls: readonly tc.NativeCall[],
    /** The caches' capacity when captured: their buffers, which the recorded calls read, last until it changes. */
    private readonly capacity: number,
  ) {
    super(capture);
  }

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
    const ids = CapturedStep.idsOf([token]);
    const { graph, attentionCalls } = CapturedStep.captureStep(model, ids, () => model.forwardLastLogits(ids, caches), 'attentionDecode');
    return new DecodeGraph({ model, graph, ids, rope }, decodeCaches, attentionCalls, capacity);
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
    if (!this.canStep()) throw new Error('DecodeGraph.step: the caches or RoPE tables changed since the capture (check canStep())');
    const position = this.caches[0].offset;
    for (const call of this.attentionCalls) call.args[POSITION_ARG] = position;
    this.replay([token]);
    for (const c of this.caches) c.commit(1);
  }
}

/**
 * A batched decode step over a page pool (EngineBatchModel.decode: chapter 3.1's scheduler), captured the same
 * way. What changes between its replays: the B tokens (the graph's ids [B, 1]), and the positions [B] and block
 * tables [B, width] that every layer's pagedAttentionDecode reads (Qwen2Model's PagedRows: one pair of tensors
 * for the whole step, so no other temporary of the step shares their buffers), rewritten from the requests'
 * block tables. It replays while the same requests decode in the same order, no table outgrows the width it was
 * captured with (a page more every 16 tokens for the longest one), and the RoPE tables are the same; then it is
 * captured again.
 */
export class BatchDecodeGraph extends CapturedStep {
  private constructor(
    capture: Capture,
    private readonly tables: readonly BlockTable[],
    /** The positions and block tables every layer's attention call reads. */
    private readonly positions: Int32Array,
    private readonly blockTables: Int32Array,
    private readonly width: number,
  ) {
    super(capture);
  }

  /**
   * Runs the decode step of `tokens` after what `tables` hold (each with room for one more token, and `caches`
   * their layers' views), capturing it, and returns the graph (logits(): the step's); null, having run nothing,
   * for a model DecodeGraph.supports() turns down.
   */
  static capture(
    model: Qwen2Model,
    tokens: readonly number[],
    tables: readonly BlockTable[],
    caches: readonly (readonly LayerCache[])[],
  ): BatchDecodeGraph | null {
    if (!DecodeGraph.supports(model)) return null;
    const rope = model.ropeTables(Math.max(...tables.map((t) => t.length)) + 1);
    const ids = CapturedStep.idsOf(tokens);
    const { graph, attentionCalls: calls } = CapturedStep.captureStep(
      model,
      ids,
      () => model.decodeRows(ids, caches),
      'pagedAttentionDecode',
    );
    const [positions, blockTables] = [PAGED_POSITIONS_ARG, PAGED_TABLES_ARG].map((arg) => calls[0].args[arg] as tc.NativeView);
    if (!calls.every((c) => c.args[PAGED_POSITIONS_ARG] === positions && c.args[PAGED_TABLES_ARG] === blockTables)) {
      throw new Error('BatchDecodeGraph: the layers of a decode step read positions and block tables of their own');
    }
    const b = tokens.length;
    const width = Math.max(1, ...tables.map((t) => t.pages.length));
    return new BatchDecodeGraph(
      { model, graph, ids, rope },
      [...tables],
      int32Values(positions, b),
      int32Values(blockTables, b * width),
      width,
    );
  }

  /** Whether the step of these requests (each with room for one more token) can be replayed. */
  fits(tables: readonly BlockTable[]): boolean {
    return (
      tables.length === this.tables.length &&
      tables.every((t, i) => t === this.tables[i] && t.pages.length <= this.width) &&
      this.model.ropeTables(Math.max(...tables.map((t) => t.length)) + 1) === this.rope
    );
  }

  /** The decode step of `tokens` after what the tables hold (fits(tables) must be true). */
  step(tokens: readonly number[]): void {
    this.tables.forEach(({ pages, length }, i) => {
      this.positions[i] = length;
      this.blockTables.set(pages, i * this.width);
      this.blockTables.fill(-1, i * this.width + pages.length, (i + 1) * this.width);
    });
    this.replay(tokens);
  }
}
