// Chapter 3.5: prefill and decode in separate workers. Read docs/week3/3.5-prefill-decode-separation.md, then
// replace each `throw` with your code. DecodeScheduler's receive, step, cancel, idle and counts are given.
//
// In one scheduler (chapter 2.7), every step runs a prefill chunk and the batch's decode step one after the
// other: a long prompt arriving adds its chunk's time to every running request's next token, again and again
// until it is prefilled. Disaggregated serving gives each phase a worker of its own, with its own model and
// page pool:
//
// - PrefillScheduler prefills prompts and samples each request's first token. A request whose prefill produced
//   its first token moves: handOff exports its pages (kv-transfer.ts) and frees them here.
// - DecodeScheduler receives handoffs; when a slot and the pages are free it imports one (admitArrivals), and
//   the request decodes from its first token as if it had been prefilled there. Chapter 3.1's PagedScheduler
//   does the rest: the pages of each next token, and preemption (a preempted request is recomputed here, as a
//   prompt of its prompt and the tokens it generated).
import type { GenerationRequest, StepOutput } from '@tiny-llm/week2';
import { NotImplemented } from '@tiny-llm/week1/not-implemented';
import type { KvTransfer } from './kv-transfer.ts';
import { PagedScheduler } from './paged-batch.ts';

/** A request leaving the prefill worker: what it asked for, the token its prefill produced, and its cache. */
export interface Handoff {
  /** The request's id on the prefill side; the decode side keeps it. */
  id: number;
  request: GenerationRequest;
  firstToken: number;
  transfer: KvTransfer;
}

/** Chapter 3.1's scheduler, prefilling only: a request leaves it once its first token is sampled. */
export class PrefillScheduler extends PagedScheduler {
  /**
   * The requests whose prefill is done and that go on (s.decoding among this.running; a request that ended at
   * its first token is retired already): for each, a Handoff with its first token (s.next) and its cache's
   * s.position tokens exported (exportPages), then it leaves: this.retire(its index) gives its pages back.
   * Called after each step, so that no request decodes here.
   */
  handOff(): Handoff[] {
    throw new NotImplemented('3.5', 'PrefillScheduler.handOff');
  }
}

/** Chapter 3.1's scheduler, decoding requests another worker prefilled. */
export class DecodeScheduler extends PagedScheduler {
  /** Handoffs received and not imported yet, oldest first. */
  protected readonly arrivals: Handoff[] = [];

  /** Requests come prefilled, through receive. Given. */
  override submit(_request: GenerationRequest): number {
    throw new RangeError('DecodeScheduler.submit: a decode worker takes requests another worker prefilled: receive(handoff)');
  }

  /** Queues a prefilled request; it decodes once admitArrivals imports it. Given. */
  receive(handoff: Handoff): void {
    const { request, transfer } = handoff;
    const most = request.promptIds.length + request.maxTokens;
    const pages = Math.ceil(Math.min(most, this.model.maxPositions) / this.model.pool.pageSize);
    if (pages > this.model.pool.numPages) {
      throw new RangeError(
        `DecodeScheduler.receive: request ${handoff.id} may reach ${most} tokens, ${pages} pages, but the pool has ${this.model.pool.numPages} pages in all`,
      );
    }
    if (transfer.numTokens !== request.promptIds.length) {
      throw new RangeError(
        `DecodeScheduler.receive: request ${handoff.id}'s transfer holds ${transfer.numTokens} tokens, its prompt has ${request.promptIds.length}`,
      );
    }
    this.arrivals.push(handoff);
  }

  override get idle(): boolean {
    return super.idle && this.arrivals.length === 0;
  }

  override get counts(): { running: number; waiting: number } {
    const { running, waiting } = super.counts;
    return { running, waiting: waiting + this.arrivals.length };
  }

  /** Ends a request wherever it is: not yet imported, waiting or running. Given. */
  override cancel(id: number): boolean {
    const arrived = this.arrivals.findIndex((h) => h.id === id);
    if (arrived < 0) return super.cancel(id);
    this.arrivals.splice(arrived, 1);
    return true;
  }

  /** Imports what arrived while there is room, then chapter 3.1's step decodes. Given. */
  override step(): Promise<StepOutput[]> {
    this.admitArrivals();
    return super.step();
  }

  /**
   * Imports the oldest arrivals while a slot is free (this.running.length < this.maxBatch), no preempted
   * request waits to be recomputed (this.waiting is empty: they are older) and the pool has the transfer's
   * pages; the first that does not fit waits, and those behind it too. Each becomes a running
   * Sequence<BlockTable>(id, request) whose cache is importPages(pool, transfer, `request ${id}`), that has
   * prefilled its whole prompt, generated its first token, and feeds that token next.
   */
  protected admitArrivals(): void {
    throw new NotImplemented('3.5', 'DecodeScheduler.admitArrivals');
  }
}
