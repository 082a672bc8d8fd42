// The engine's model as the course's scheduler drives it (chapter 3.1's PagedScheduler, which extends chapter
// 2.6's): a request's cache is a block table in one page pool shared by every request and layer, with prefix
// caching (chapter 3.2) unless turned off. A prefill runs its chunk through the fused model, the new keys and
// values written into the request's pages and gathered for flash attention; a decode step runs the B requests'
// tokens through the projections together and attention in one kernel call (Qwen2Model.decodeRows, native/
// attention_decode.cc's pagedAttentionDecode) that applies RoPE, writes each row's key and value into its slot
// and reads every row's pages in place: no padding and no copy of the caches.
import * as tc from '@tiny-llm/tensor-core';
import type { ModelConfig, Tensor } from '@tiny-llm/tensor-core';
import { type BlockTable, PagedLayerCache, PagedModelBase, PrefixCache } from '@tiny-llm/reference/week3';
import { BatchDecodeGraph, DecodeGraph } from './model/decode-graph.ts';
import type { Qwen2Model } from './model/qwen2.ts';

export interface EngineBatchOptions {
  /** Pages in the pool (see pagesIn). */
  numPages: number;
  /** Tokens per page (default 16). */
  pageSize?: number;
  /** Share the pages of common prompt prefixes between requests (default true). */
  prefixCaching?: boolean;
  /**
   * Replay decode steps from a captured graph while the same requests decode together (default true;
   * model/decode-graph.ts): a step is then its kernel calls alone. false runs every step through decodeRows.
   */
  decodeGraphs?: boolean;
}

export class EngineBatchModel extends PagedModelBase {
  private readonly graphs: boolean;
  private graph: BatchDecodeGraph | null = null;

  constructor(
    readonly model: Qwen2Model,
    options: EngineBatchOptions,
  ) {
    super(model.config, {
      numPages: options.numPages,
      pageSize: options.pageSize,
      prefixCache: options.prefixCaching === false ? null : new PrefixCache(),
    });
    this.graphs = options.decodeGraphs !== false && DecodeGraph.supports(model);
  }

  /** The pages of `pageSize` tokens that `megabytes` hold for a model of this config (keys and values of every layer, float32). */
  static pagesIn(config: ModelConfig, megabytes: number, pageSize = 16): number {
    const bytesPerPage = 2 * config.numHiddenLayers * config.numKeyValueHeads * pageSize * config.headDim * 4;
    return Math.floor((megabytes * 2 ** 20) / bytesPerPage);
  }

  prefill(ids: readonly number[], offset: number, table: BlockTable): Tensor {
    this.pool.prepare([table], ids.length);
    const x = tc.tensor(Int32Array.from(ids), { dtype: 'int32', shape: [1, ids.length] });
    try {
      const logits = this.model.forwardLastLogits(x, this.layersOf(table), offset);
      table.commit(ids);
      return logits;
    } finally {
      x.dispose();
    }
  }

  decode(tokens: readonly number[], positions: readonly number[], tables: readonly BlockTable[]): Tensor {
    tables.forEach((t, i) => {
      if (t.length !== positions[i])
        throw new RangeError(
          `EngineBatchModel.decode: row ${i} is at position ${positions[i]}, ${t.owner}'s block table holds ${t.length} tokens`,
        );
    });
    this.pool.prepare(tables, 1);
    const logits = this.graphs
      ? this.decodeInGraph(tokens, tables)
      : this.model.decodeRows(
          tokens,
          tables.map((t) => this.layersOf(t)),
        );
    tables.forEach((t, i) => t.commit([tokens[i]]));
    return logits;
  }

  /** The step replayed from the graph of the last steps, or run and captured when the batch changed. */
  private decodeInGraph(tokens: readonly number[], tables: readonly BlockTable[]): Tensor {
    if (this.graph?.fits(tables)) {
      this.graph.step(tokens);
    } else {
      this.graph?.dispose();
      this.graph = null; // until the capture returns: one that throws leaves no disposed graph behind
      // Not null: the model passed DecodeGraph.supports (this.graphs).
      this.graph = BatchDecodeGraph.capture(
        this.model,
        tokens,
        tables,
        tables.map((t) => this.layersOf(t)),
      )!;
    }
    return this.graph.logits();
  }

  /** The table as each layer's cache. */
  private layersOf(table: BlockTable): PagedLayerCache[] {
    return this.model.layers.map((_, i) => new PagedLayerCache(table, i));
  }
}
