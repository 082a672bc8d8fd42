// The main thread's side of the worker that owns the model: submit a request and receive its tokens as they
// come, cancel it (a client that disconnects), read the scheduler's counts for the metrics.
import { SHARE_ENV, Worker } from 'node:worker_threads';
import { UserError } from '../errors.ts';
import type { FromWorker, KvPages, Prefilled, SubmittedRequest, TokenOutput, ToWorker, WorkerOptions } from './protocol.ts';

export type EngineRequest = SubmittedRequest;

/** What a request hears: each token, then its end (or why the worker refused it). */
export type RequestEvent = { type: 'token'; output: TokenOutput } | { type: 'rejected'; message: string };

/** What the HTTP side asks of the model: one worker (EngineWorker), or a prefill and a decode worker (chapter 3.5). */
export interface ServingEngine {
  readonly description: string;
  readonly maxPositions: number;
  /** The schedulers' counts after their last step. */
  readonly running: number;
  readonly waiting: number;
  /** The page pools after the last step (null: a model without a pool). */
  readonly kvPages: KvPages | null;
  /** Submits a request; `listener` hears its tokens. Returns the request's id, for cancel. */
  submit(request: EngineRequest, listener: (event: RequestEvent) => void): number;
  /** Ends a request; nothing more is heard of it. */
  cancel(id: number): void;
  close(): Promise<unknown>;
}

export class EngineWorker implements ServingEngine {
  private readonly listeners = new Map<number, (event: RequestEvent) => void>();
  private nextId = 1;
  /** The scheduler's counts after its last step. */
  running = 0;
  waiting = 0;
  /** The engine's page pool after the last step (null: a model without a pool). */
  kvPages: KvPages | null = null;
  /** Set when the worker died: every later request fails with it. */
  private failure: string | null = null;
  /**
   * A prefill worker's handoffs (chapter 3.5): a request that leaves this worker prefilled, with the listener
   * that heard its first token. Nothing more is heard of it here.
   */
  onHandoff: ((id: number, prefilled: Prefilled, listener: (event: RequestEvent) => void) => void) | null = null;

  private constructor(
    private readonly worker: Worker,
    readonly description: string,
    readonly maxPositions: number,
  ) {
    worker.on('message', (message: FromWorker) => this.receive(message));
    worker.on('error', (err) => this.fail(`the model's worker failed: ${err.message}`));
    worker.on('exit', (code) => this.fail(`the model's worker exited (code ${code})`));
  }

  /** Starts the worker and waits until its model is loaded. */
  static start(options: WorkerOptions): Promise<EngineWorker> {
    // The process's own environment, not a copy: what the worker sets there reaches native code (a GPU driver
    // opened there reads EGL_PLATFORM, which initWebGPU sets when there is no display).
    const worker = new Worker(new URL('./worker-entry.mjs', import.meta.url), { workerData: options, env: SHARE_ENV });
    return new Promise((resolve, reject) => {
      const onMessage = (message: FromWorker) => {
        if (message.type === 'ready') {
          worker.off('message', onMessage);
          resolve(new EngineWorker(worker, message.description, message.maxPositions));
        } else if (message.type === 'failed') {
          worker.off('message', onMessage);
          void worker.terminate();
          reject(new UserError(message.message));
        }
      };
      worker.on('message', onMessage);
      worker.once('error', reject);
    });
  }

  /** Submits a request; `listener` hears its tokens. Returns the request's id, for cancel. */
  submit(request: EngineRequest, listener: (event: RequestEvent) => void): number {
    return this.enqueue(listener, (id) => this.send({ type: 'submit', id, ...request }));
  }

  /** A decode worker's request that another worker prefilled (chapter 3.5); its pages move, not copied. */
  submitPrefilled(request: EngineRequest, prefilled: Prefilled, listener: (event: RequestEvent) => void): number {
    const pages = prefilled.transfer.pages.map((p) => p.data.buffer as ArrayBuffer);
    const { firstToken, transfer } = prefilled;
    return this.enqueue(listener, (id) => this.send({ type: 'prefilled', id, ...request, firstToken, transfer }, pages));
  }

  private enqueue(listener: (event: RequestEvent) => void, send: (id: number) => void): number {
    const id = this.nextId++;
    if (this.failure) {
      queueMicrotask(() => listener({ type: 'rejected', message: this.failure! }));
      return id;
    }
    this.listeners.set(id, listener);
    send(id);
    return id;
  }

  /** Ends a request; its slot is free at the next step. Nothing more is heard of it. */
  cancel(id: number): void {
    if (this.listeners.delete(id)) this.send({ type: 'cancel', id });
  }

  close(): Promise<number> {
    this.failure = 'the server is shutting down';
    return this.worker.terminate();
  }

  private send(message: ToWorker, transfer: ArrayBuffer[] = []): void {
    this.worker.postMessage(message, transfer);
  }

  private receive(message: FromWorker): void {
    if (message.type === 'step') {
      this.running = message.running;
      this.waiting = message.waiting;
      this.kvPages = message.kvPages;
      for (const output of message.outputs) {
        const listener = this.listeners.get(output.id);
        if (output.finishReason) this.listeners.delete(output.id);
        listener?.({ type: 'token', output });
      }
    } else if (message.type === 'rejected') {
      const listener = this.listeners.get(message.id);
      this.listeners.delete(message.id);
      listener?.({ type: 'rejected', message: message.message });
    } else if (message.type === 'handoff') {
      const listener = this.listeners.get(message.id);
      this.listeners.delete(message.id);
      // A request cancelled while its handoff was on the way is dropped here.
      if (listener) this.onHandoff?.(message.id, message, listener);
    } else if (message.type === 'failed') {
      this.fail(message.message);
    }
  }

  /** The worker is gone: every request in flight ends with the reason. */
  private fail(reason: string): void {
    if (this.failure) return;
    this.failure = reason;
    for (const listener of this.listeners.values()) listener({ type: 'rejected', message: reason });
    this.listeners.clear();
  }
}
