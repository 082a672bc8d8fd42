// The server's worker thread: it owns the model and the scheduler (chapter 2.6's continuous batching with
// chapter 2.7's chunked prefill) and runs steps while there is work, posting each step's tokens to the main
// thread. Messages are read between steps, so a submit or a cancel takes effect at the next step.
//
// Disaggregated (chapter 3.5), two of these run, each with its own model and page pool: the prefill worker
// posts each request whose prefill produced its first token as a handoff (its KV cache's pages transferred, not
// copied), and the decode worker takes it from the main thread as a prefilled request.
import { setPriority } from 'node:os';
import { parentPort, workerData } from 'node:worker_threads';
import * as tc from '@tiny-llm/tensor-core';
import type { Tensor } from '@tiny-llm/tensor-core';
import { makeSampler } from '@tiny-llm/reference/week1';
import type { DecodeScheduler, PrefillScheduler } from '@tiny-llm/reference/week3';
import { oneLine } from '../errors.ts';
import { learnerMakeSampler, loadPhaseScheduler, loadScheduler } from '../registry.ts';
import type { FromWorker, Prefilled, SamplingOptions, SubmittedRequest, ToWorker, WorkerOptions } from './protocol.ts';

// The model's thread, and the kernel pool's threads it starts (they inherit it), run at a lower priority than
// the main thread: on a machine whose cores the forward pass keeps busy, the main thread still gets a core at
// once when a request, a streamed token or /health needs it. (Linux applies setpriority to the calling thread;
// elsewhere, where it may apply to the process or be refused, the priority stays as it is.)
const ENGINE_THREAD_NICENESS = 5;
if (process.platform === 'linux') {
  try {
    setPriority(0, ENGINE_THREAD_NICENESS);
  } catch {
    // Not permitted here: run at the default priority.
  }
}

const port = parentPort!;
const post = (message: FromWorker, transfer: ArrayBuffer[] = []) => port.postMessage(message, transfer);
const options = workerData as WorkerOptions;

async function main(): Promise<void> {
  const { phase, modelDir, choice, maxBatch, prefillChunk, kvCacheMb, prefixCaching } = options;
  const schedulerOptions = { maxBatch, prefillChunk, kvCacheMb, prefixCaching };
  const loaded = phase
    ? loadPhaseScheduler(modelDir, phase, schedulerOptions, choice.exact)
    : await loadScheduler(modelDir, choice, schedulerOptions);
  const { scheduler, config, description, pool } = loaded;
  const make = choice.solution === 'learner' ? await learnerMakeSampler() : makeSampler;
  const samplerOf = (s: SamplingOptions): ((logits: Tensor) => Tensor) | undefined =>
    s.temperature > 0 ? make({ temperature: s.temperature, topP: s.topP, seed: s.seed }) : undefined;
  const requestOf = (m: SubmittedRequest) => ({
    promptIds: m.promptIds,
    maxTokens: m.maxTokens,
    stopIds: m.stopIds,
    sampler: samplerOf(m.sampling),
  });
  // The main thread's request ids, and the scheduler's: both ways.
  const mainIdOf = new Map<number, number>();
  const schedulerIdOf = new Map<number, number>();
  let wake: (() => void) | null = null;
  /** The scheduler's counts and the page pool, for the metrics. */
  const status = () => ({ ...scheduler.counts, kvPages: pool ? { used: pool.usedPages, total: pool.numPages } : null });

  port.on('message', (message: ToWorker) => {
    if (message.type === 'submit' || message.type === 'prefilled') {
      try {
        const id =
          message.type === 'submit'
            ? scheduler.submit(requestOf(message))
            : receivePrefilled(loaded.scheduler as DecodeScheduler, message.id, message);
        mainIdOf.set(id, message.id);
        schedulerIdOf.set(message.id, id);
      } catch (err) {
        post({ type: 'rejected', id: message.id, message: oneLine(err).replace(/^\w*Scheduler\.(submit|receive): /, '') });
      }
    } else {
      const id = schedulerIdOf.get(message.id);
      if (id !== undefined) {
        scheduler.cancel(id);
        schedulerIdOf.delete(message.id);
        mainIdOf.delete(id);
        // A cancel frees a slot and pages between steps: the metrics hear it now (no step may follow).
        post({ type: 'step', outputs: [], ...status() });
      }
    }
    wake?.();
  });
  // A request may reach no further than the model's context, nor than the page pool holds.
  const maxPositions = Math.min(config.maxPositionEmbeddings, pool ? pool.numPages * pool.pageSize : Infinity);
  post({ type: 'ready', description, maxPositions, vocabSize: config.vocabSize });

  /**
   * A step that fails (a rank of a tensor-parallel model that died, say) may have left the caches of the
   * requests in flight half-written: they end with its error, and the engine goes on with the next ones.
   */
  const failInFlight = (err: unknown) => {
    for (const [schedulerId, id] of mainIdOf) {
      scheduler.cancel(schedulerId);
      post({ type: 'rejected', id, message: `the engine failed: ${oneLine(err)}` });
    }
    mainIdOf.clear();
    schedulerIdOf.clear();
  };

  for (;;) {
    if (scheduler.idle) {
      await new Promise<void>((resolve) => (wake = resolve));
      wake = null;
      continue;
    }
    let step: Awaited<ReturnType<typeof scheduler.step>>;
    try {
      step = await scheduler.step();
    } catch (err) {
      failInFlight(err);
      continue;
    }
    const outputs = step.map((o) => {
      const id = mainIdOf.get(o.id)!;
      if (o.finishReason) {
        mainIdOf.delete(o.id);
        schedulerIdOf.delete(id);
      }
      return { ...o, id };
    });
    // The step's tokens first (a request's first token among them), then the requests that leave with it.
    const handoffs = phase === 'prefill' ? handOff(scheduler as PrefillScheduler) : [];
    post({ type: 'step', outputs, ...status() });
    for (const h of handoffs)
      post(
        h,
        h.transfer.pages.map((p) => p.data.buffer as ArrayBuffer),
      );
    // Let the messages that arrived during the step in before the next one.
    await new Promise<void>((resolve) => setImmediate(resolve));
  }

  /** The decode worker: a request the prefill worker prefilled decodes here under the main thread's id. */
  function receivePrefilled(decoder: DecodeScheduler, id: number, message: SubmittedRequest & Prefilled): number {
    const request = requestOf(message);
    // The prefill worker's sampler drew the first token: this one goes on from the second draw of the same seed.
    const sampler = request.sampler;
    if (sampler) tc.tidy(() => void sampler(tc.zeros([1, config.vocabSize])));
    decoder.receive({ id, request, firstToken: message.firstToken, transfer: message.transfer });
    return id;
  }

  /** The prefill worker: every request whose prefill produced its first token leaves, with its pages. */
  function handOff(prefiller: PrefillScheduler): ({ type: 'handoff'; id: number } & Prefilled)[] {
    return prefiller.handOff().map(({ id, firstToken, transfer }) => {
      const mainId = mainIdOf.get(id)!;
      mainIdOf.delete(id);
      schedulerIdOf.delete(mainId);
      return { type: 'handoff', id: mainId, firstToken, transfer };
    });
  }
}

main().catch((err) => post({ type: 'failed', message: oneLine(err) }));
