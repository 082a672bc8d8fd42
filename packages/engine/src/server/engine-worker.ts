// The main thread's side of the worker that owns the model: submit a request and receive its tokens as they
// come, cancel it (a client that disconnects), read the scheduler's counts for the metrics.
import { SHARE_ENV, Worker } from 'node:worker_threads';
import { UserError } from '../errors.ts';
import type { FromWorker, KvPages, SamplingOptions, TokenOutput, ToWorker, WorkerOptions } from './protocol.ts';

export interface EngineRequest {
  promptIds: number[];
  maxTokens: number;
  stopIds: number[];
  sampling: SamplingOptions;
}

/** What a request hears: each token, then its end (or why the worker refused it). */
export type RequestEvent = { type: 'token'; output: TokenOutput } | { type: 'rejected'; message: string };

export class EngineWorker {
  private readonly listeners = new Map<number, (event: RequestEvent) => void>();
  private nextId = 1;
  /** The scheduler's counts after its last step. */
  running = 0;
  waiting = 0;
  /** The engine's page pool after the last step (null: a model without a pool). */
  kvPages: KvPages | null = null;
  /** Set when the worker died: every later request fails with it. */
  private failure: string | null = null;

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
    const id = this.nextId++;
    if (this.failure) {
      queueMicrotask(() => listener({ type: 'rejected', message: this.failure! }));
      return id;
    }
    this.listeners.set(id, listener);
    this.send({ type: 'submit', id, ...request });
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

  private send(message: ToWorker): void {
    this.worker.postMessage(message);
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
