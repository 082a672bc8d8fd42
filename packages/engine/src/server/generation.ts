// One request's generation on the server's side: its tokens come from the worker, go through the incremental
// detokenizer (no half characters) and the stop strings (never a partial one), and come out as settled text.
// The request's metrics (time to first token, time per token, counts) are recorded here.
import type { TinyTokenizer } from '@tiny-llm/tokenizer';
import type { ServingEngine } from './engine-worker.ts';
import type { Metrics } from './metrics.ts';
import type { SamplingOptions } from './protocol.ts';
import { StopStrings } from './stop-strings.ts';

export interface GenerationParams {
  promptIds: number[];
  maxTokens: number;
  sampling: SamplingOptions;
  stop: readonly string[];
}

export type FinishReason = 'stop' | 'length';

/** What a generation reports: settled text as it comes, then its end (or a failure of the engine). */
export interface GenerationSink {
  text(text: string): void;
  end(finishReason: FinishReason, completionTokens: number): void;
  fail(message: string): void;
}

export interface ServerContext {
  worker: ServingEngine;
  tokenizer: TinyTokenizer;
  metrics: Metrics;
  /** The requests in flight and the tokens each one's cache holds (the KV cache gauge). */
  inFlight: Map<object, number>;
}

/** Starts a generation; returns the function that cancels it (a client gone). */
export function startGeneration(ctx: ServerContext, params: GenerationParams, sink: GenerationSink): () => void {
  const { worker, tokenizer, metrics, inFlight } = ctx;
  const detokenizer = tokenizer.detokenizer();
  const stop = new StopStrings(params.stop);
  const key = {};
  const started = performance.now();
  let last = started;
  let tokens = 0;
  let finished = false;
  inFlight.set(key, params.promptIds.length);
  metrics.promptTokens.inc(params.promptIds.length);

  const finish = (report: () => void) => {
    if (finished) return;
    finished = true;
    inFlight.delete(key);
    metrics.kvCacheTokens.set([...inFlight.values()].reduce((a, b) => a + b, 0));
    report();
  };
  const id = worker.submit(
    { promptIds: params.promptIds, maxTokens: params.maxTokens, stopIds: tokenizer.eosTokenIds, sampling: params.sampling },
    (event) => {
      if (event.type === 'rejected') return finish(() => sink.fail(event.message));
      const { token, finishReason } = event.output;
      if (token !== null) {
        const now = performance.now();
        (tokens === 0 ? metrics.timeToFirstToken : metrics.timePerOutputToken).observe((now - last) / 1e3);
        last = now;
        tokens++;
        metrics.generatedTokens.inc();
        inFlight.set(key, params.promptIds.length + tokens);
        metrics.kvCacheTokens.set([...inFlight.values()].reduce((a, b) => a + b, 0));
        const settled = stop.push(detokenizer.push(token));
        if (settled) sink.text(settled);
        if (stop.stopped) {
          worker.cancel(id);
          return finish(() => sink.end('stop', tokens));
        }
      }
      if (finishReason) {
        const tail = stop.push(detokenizer.flush());
        const rest = stop.stopped ? tail : tail + stop.end();
        if (rest) sink.text(rest);
        finish(() => sink.end(finishReason === 'length' ? 'length' : 'stop', tokens));
      }
    },
  );
  return () => {
    if (finished) return;
    worker.cancel(id);
    finish(() => {});
  };
}
