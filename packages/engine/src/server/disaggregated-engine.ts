// Disaggregated serving (chapter 3.5): a prefill worker and a decode worker, each a thread with its own model and
// page pool, and this thread between them. A request goes to the prefill worker, which streams its first token
// and hands it off; this thread passes the handoff (the request's KV cache pages, moved between threads, not
// copied) to the decode worker, which streams the rest. A long prompt's prefill then never sits between two
// decode steps of the requests already answering.
import type { KvPages, WorkerOptions } from './protocol.ts';
import { EngineWorker, type EngineRequest, type RequestEvent, type ServingEngine } from './engine-worker.ts';

/** Where a request is: its id in the worker that holds it. */
interface InFlight {
  request: EngineRequest;
  worker: EngineWorker;
  workerId: number;
}

export class DisaggregatedEngine implements ServingEngine {
  private readonly inFlight = new Map<number, InFlight>();
  /** The requests still in the prefill worker, by their id there. */
  private readonly prefilling = new Map<number, number>();
  private nextId = 1;

  private constructor(
    private readonly prefill: EngineWorker,
    private readonly decode: EngineWorker,
  ) {
    prefill.onHandoff = (prefillId, prefilled, listener) => {
      const id = this.prefilling.get(prefillId);
      if (id === undefined) return;
      this.prefilling.delete(prefillId);
      const request = this.inFlight.get(id)!.request;
      this.inFlight.set(id, { request, worker: decode, workerId: decode.submitPrefilled(request, prefilled, listener) });
    };
  }

  /** Starts both workers (each loads the model) and waits until both are ready. */
  static async start(options: Omit<WorkerOptions, 'phase'>): Promise<DisaggregatedEngine> {
    const [prefill, decode] = await Promise.allSettled([
      EngineWorker.start({ ...options, phase: 'prefill' }),
      EngineWorker.start({ ...options, phase: 'decode' }),
    ]);
    if (prefill.status === 'rejected' || decode.status === 'rejected') {
      for (const started of [prefill, decode]) if (started.status === 'fulfilled') await started.value.close();
      throw prefill.status === 'rejected' ? prefill.reason : (decode as PromiseRejectedResult).reason;
    }
    return new DisaggregatedEngine(prefill.value, decode.value);
  }

  get description(): string {
    return `prefill and decode in separate workers (${this.prefill.description}; ${this.decode.description})`;
  }

  get maxPositions(): number {
    return Math.min(this.prefill.maxPositions, this.decode.maxPositions);
  }

  get running(): number {
    return this.prefill.running + this.decode.running;
  }

  get waiting(): number {
    return this.prefill.waiting + this.decode.waiting;
  }

  /** Both pools together. */
  get kvPages(): KvPages | null {
    const [a, b] = [this.prefill.kvPages, this.decode.kvPages];
    return a && b ? { used: a.used + b.used, total: a.total + b.total } : (a ?? b);
  }

  submit(request: EngineRequest, listener: (event: RequestEvent) => void): number {
    const id = this.nextId++;
    const ended = (event: RequestEvent) => event.type === 'rejected' || event.output.finishReason !== undefined;
    const workerId = this.prefill.submit(request, (event) => {
      if (ended(event)) this.forget(id);
      listener(event);
    });
    this.inFlight.set(id, { request, worker: this.prefill, workerId });
    this.prefilling.set(workerId, id);
    return id;
  }

  cancel(id: number): void {
    const where = this.inFlight.get(id);
    if (!where) return;
    this.forget(id);
    where.worker.cancel(where.workerId);
  }

  private forget(id: number): void {
    const where = this.inFlight.get(id);
    if (where?.worker === this.prefill) this.prefilling.delete(where.workerId);
    this.inFlight.delete(id);
  }

  close(): Promise<unknown> {
    return Promise.all([this.prefill.close(), this.decode.close()]);
  }
}
