// The server's worker thread: it owns the model and the scheduler (chapter 2.6's continuous batching with
// chapter 2.7's chunked prefill) and runs steps while there is work, posting each step's tokens to the main
// thread. Messages are read between steps, so a submit or a cancel takes effect at the next step.
import { parentPort, workerData } from 'node:worker_threads';
import type { Tensor } from '@tiny-llm/tensor-core';
import { makeSampler } from '@tiny-llm/reference/week1';
import { oneLine } from '../errors.ts';
import { learnerMakeSampler, loadScheduler } from '../registry.ts';
import type { FromWorker, SamplingOptions, ToWorker, WorkerOptions } from './protocol.ts';

const port = parentPort!;
const post = (message: FromWorker) => port.postMessage(message);
const options = workerData as WorkerOptions;

async function main(): Promise<void> {
  const { scheduler, config, description, pool } = await loadScheduler(options.modelDir, options.choice, {
    maxBatch: options.maxBatch,
    prefillChunk: options.prefillChunk,
    kvCacheMb: options.kvCacheMb,
    prefixCaching: options.prefixCaching,
  });
  const make = options.choice.solution === 'learner' ? await learnerMakeSampler() : makeSampler;
  const samplerOf = (s: SamplingOptions): ((logits: Tensor) => Tensor) | undefined =>
    s.temperature > 0 ? make({ temperature: s.temperature, topP: s.topP, seed: s.seed }) : undefined;
  // The main thread's request ids, and the scheduler's: both ways.
  const mainIdOf = new Map<number, number>();
  const schedulerIdOf = new Map<number, number>();
  let wake: (() => void) | null = null;
  /** The scheduler's counts and the page pool, for the metrics. */
  const status = () => ({ ...scheduler.counts, kvPages: pool ? { used: pool.usedPages, total: pool.numPages } : null });

  port.on('message', (message: ToWorker) => {
    if (message.type === 'submit') {
      try {
        const id = scheduler.submit({ promptIds: message.promptIds, maxTokens: message.maxTokens, stopIds: message.stopIds, sampler: samplerOf(message.sampling) });
        mainIdOf.set(id, message.id);
        schedulerIdOf.set(message.id, id);
      } catch (err) {
        post({ type: 'rejected', id: message.id, message: oneLine(err).replace(/^\w*Scheduler\.submit: /, '') });
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
    post({ type: 'step', outputs, ...status() });
    // Let the messages that arrived during the step in before the next one.
    await new Promise<void>((resolve) => setImmediate(resolve));
  }
}

main().catch((err) => post({ type: 'failed', message: oneLine(err) }));
