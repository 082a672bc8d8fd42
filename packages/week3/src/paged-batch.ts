// Chapter 3.1: continuous batching on the paged KV cache. Read docs/week3/3.1-paged-attention.md, then replace
// each `throw` with your code. PagedBatchModel is given (it runs on your pool, block tables and kernel), and so
// are PagedScheduler's submit and step: you write the memory decisions step makes.
import * as tc from '@tiny-llm/tensor-core';
import type { ModelConfig, Tensor } from '@tiny-llm/tensor-core';
import type { RMSNorm } from '@tiny-llm/week1';
import { NotImplemented } from '@tiny-llm/week1/not-implemented';
import {
  Qwen2ModelWeek2,
  Scheduler,
  type BatchModel,
  type GenerationRequest,
  type Projection,
  type Qwen2TransformerBlock,
  type SchedulerOptions,
  type StepOutput,
} from '@tiny-llm/week2';
import { pagedAttention } from './paged-attention.ts';
import { type BlockTable, PagedLayerCache, PagePool, type PagePoolSize } from './paged-kv-cache.ts';

/** What PagedScheduler needs of a model: a BatchModel whose request caches are block tables in its pool. */
export interface PagedModel extends BatchModel<BlockTable> {
  readonly pool: PagePool;
}

/**
 * What a paged BatchModel shares with any other (PagedBatchModel here, the engine's EngineBatchModel): a pool
 * sized for the model's config, the block tables made in it, and what the scheduler reads off the config. Given.
 */
export abstract class PagedModelBase implements PagedModel {
  readonly pool: PagePool;

  /** `size`: the pages of the pool and their tokens; with a PrefixCache (chapter 3.2), requests share prefixes. */
  constructor(
    readonly config: ModelConfig,
    size: PagePoolSize,
  ) {
    this.pool = PagePool.forModel(config, size);
  }

  get vocabSize(): number {
    return this.config.vocabSize;
  }

  get maxPositions(): number {
    return this.config.maxPositionEmbeddings;
  }

  newRequestCache(): BlockTable {
    return this.pool.newTable();
  }

  release(table: BlockTable): void {
    table.release();
  }

  abstract prefill(ids: readonly number[], offset: number, table: BlockTable): Tensor;
  abstract decode(tokens: readonly number[], positions: readonly number[], tables: readonly BlockTable[]): Tensor;
}

/** The week 2 model on a paged KV cache. Given. */
export class PagedBatchModel extends PagedModelBase {
  constructor(
    readonly model: Qwen2ModelWeek2,
    size: PagePoolSize,
  ) {
    super(model.config, size);
  }

  static load(dir: string, size: PagePoolSize): PagedBatchModel {
    return new PagedBatchModel(Qwen2ModelWeek2.load(dir), size);
  }

  prefill(ids: readonly number[], offset: number, table: BlockTable): Tensor {
    if (offset !== table.length)
      throw new RangeError(
        `PagedBatchModel.prefill: ${ids.length} tokens at position ${offset}, but ${table.owner}'s block table holds ${table.length}`,
      );
    this.pool.prepare([table], ids.length);
    const layers = this.model.layers.map((_, i) => new PagedLayerCache(table, i));
    const logits = tc.tidy(() => {
      const all = this.model.forward(tc.tensor([[...ids]], { dtype: 'int32' }), offset, layers); // [1, L, V]
      return tc.contiguous(tc.slice(all, [null, -1])); // [1, V]
    });
    table.commit(ids);
    return logits;
  }

  decode(tokens: readonly number[], positions: readonly number[], tables: readonly BlockTable[]): Tensor {
    if (tokens.length === 0 || positions.length !== tokens.length || tables.length !== tokens.length) {
      throw new RangeError(
        `PagedBatchModel.decode: expected one position and one block table per token, got ${tokens.length} tokens, ${positions.length} positions, ${tables.length} tables`,
      );
    }
    tables.forEach((table, b) => {
      if (positions[b] !== table.length)
        throw new RangeError(
          `PagedBatchModel.decode: row ${b} is at position ${positions[b]}, but ${table.owner}'s block table holds ${table.length} tokens`,
        );
    });
    this.pool.prepare(tables, 1);
    const logits = tc.tidy(() => {
      let h = this.model.embedding.forward(
        tc.tensor(
          tokens.map((t) => [t]),
          { dtype: 'int32' },
        ),
      ); // [B, 1, E]
      this.model.layers.forEach((layer, i) => {
        const next = tc.tidy(() => this.decodeLayer(layer, i, h, positions, tables));
        h.dispose();
        h = next;
      });
      h = tc.reshape(this.model.norm.forward(h), [tokens.length, -1]);
      return this.model.lmHead ? this.model.lmHead.forward(h) : this.model.embedding.asLinear(h); // [B, V]
    });
    tables.forEach((table, b) => table.commit([tokens[b]]));
    return logits;
  }

  /**
   * One layer of a decode step, x [B, 1, E]: the week 2 layer, with its attention reading the block tables. Each
   * row's new key and value go to the slot at its position; the kernel then attends over its tokens, that one
   * included, in place.
   */
  private decodeLayer(
    layer: Qwen2TransformerBlock,
    index: number,
    x: Tensor,
    positions: readonly number[],
    tables: readonly BlockTable[],
  ): Tensor {
    const { shape, weights, rope } = layer.selfAttn;
    const [b, d] = [x.shape[0], shape.headDim];
    const normed = layer.inputLayerNorm.forward(x);
    const project = (w: Projection, heads: number, norm?: RMSNorm) => {
      const t = tc.reshape(w.forward(normed), [b, 1, heads, d]);
      return norm ? norm.forward(t) : t;
    };
    const q = rope.forward(project(weights.q, shape.numHeads, weights.qNorm), positions); // [B, 1, Hq, D]
    const k = rope.forward(project(weights.k, shape.numKvHeads, weights.kNorm), positions);
    const v = project(weights.v, shape.numKvHeads);
    const rowOf = (t: Tensor, r: number) => tc.transpose(tc.slice(t, [[r, r + 1]]), [0, 2, 1, 3]); // [1, Hkv, 1, D]
    tables.forEach((table, r) => this.pool.write(index, table, table.length, rowOf(k, r), rowOf(v, r)));
    const pages = tables.map((t) => t.pages);
    const lengths = tables.map((t) => t.length + 1);
    const attended = pagedAttention(tc.reshape(q, [b, shape.numHeads, d]), this.pool.keys[index], this.pool.values[index], pages, lengths);
    const h = tc.add(x, weights.o.forward(tc.reshape(attended, [b, 1, shape.numHeads * d])));
    return tc.add(h, layer.mlp.forward(layer.postAttentionLayerNorm.forward(h)));
  }
}

/** Continuous batching (chapter 2.6) that admits and preempts requests by the pages of its model's pool. */
export class PagedScheduler extends Scheduler<BlockTable> {
  /** Requests preempted so far (pages freed, to be recomputed): how often the pool ran short. */
  preemptions = 0;

  constructor(
    override readonly model: PagedModel,
    options: SchedulerOptions,
  ) {
    super(model, options);
  }

  /** Queues a request, refusing one that could not fit in the whole pool on its own. Given. */
  override submit(request: GenerationRequest): number {
    const { numPages, pageSize } = this.model.pool;
    const most = Math.min(request.promptIds.length + request.maxTokens, this.model.maxPositions);
    const pages = Math.ceil(most / pageSize);
    if (pages > numPages) {
      throw new RangeError(
        `PagedScheduler.submit: the request may reach ${most} tokens (a prompt of ${request.promptIds.length} and up to ${request.maxTokens} more), ` +
          `${pages} pages of ${pageSize}, but the pool has ${numPages} pages in all (${numPages * pageSize} tokens): make the pool larger or ask for fewer tokens`,
      );
    }
    return super.submit(request);
  }

  /** Chapter 2.6's step, after the memory decisions: room for the running requests first, then admission. Given. */
  override async step(): Promise<StepOutput[]> {
    this.makeRoom();
    this.admitWithPages();
    // 2.6's step admits whatever still waits, without asking the pool: those requests sit this step out.
    const held = this.waiting.splice(0);
    try {
      return await super.step();
    } finally {
      this.waiting.unshift(...held);
    }
  }

  /**
   * Every request that decodes this step writes one token, at its position: it needs its table to hold
   * position + 1 tokens. The running requests that decode are this.running.filter((s) => s.decoding), each
   * with its block table in s.cache. When the pool's free pages cover what they need together (pagesNeeded),
   * reserve them; else preempt the newest running request (the last of this.running) and count again.
   */
  protected makeRoom(): void {
    throw new NotImplemented('3.1', 'PagedScheduler.makeRoom');
  }

  /**
   * Admits the oldest waiting requests (this.waiting[0] first) while fewer than this.maxBatch run and the pool
   * has the pages of the request's whole prompt: a new block table (this.model.newRequestCache()) whose owner is
   * `request ${id}`, reserved for the prompt; the sequence gets it as its cache and moves to this.running. The
   * first request that does not fit waits, and the ones behind it too (give back what it took: table.release()).
   * Chapter 3.2: before counting pages, this.model.pool.prefixCache?.attach(table, prompt) gives the table the
   * cached pages of the prompt and returns the tokens they hold: the sequence starts prefilled that far.
   */
  protected admitWithPages(): void {
    throw new NotImplemented('3.1', 'PagedScheduler.admitWithPages');
  }

  /**
   * Takes running request `index` out (this.retire(index) frees its pages) and puts it back at the head of the
   * queue, to be recomputed: a new Sequence with the same id, whose request is the old one with its prompt and
   * the tokens it generated as the prompt, and what it has left to generate as maxTokens. Count it in
   * this.preemptions.
   */
  protected preempt(index: number): void {
    throw new NotImplemented('3.1', 'PagedScheduler.preempt');
  }
}
