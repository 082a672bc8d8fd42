// The messages between the server's main thread (HTTP, tokenizer, streaming) and the worker thread that owns the
// model and the scheduler, so that a forward pass never blocks accepting, streaming or /health.
import type { FinishReason } from '@tiny-llm/reference/week2';
import type { KvTransfer } from '@tiny-llm/reference/week3';
import type { KvCacheChoice, ModelChoice, Phase } from '../registry.ts';

export interface WorkerOptions extends KvCacheChoice {
  modelDir: string;
  choice: ModelChoice;
  maxBatch: number;
  prefillChunk: number;
  /** Disaggregated serving (chapter 3.5): this worker only prefills, or only decodes; none: it does both. */
  phase?: Phase;
}

export interface SamplingOptions {
  temperature: number;
  topP?: number;
  seed?: number;
}

/** A request as the main thread submits it. */
export interface SubmittedRequest {
  promptIds: number[];
  maxTokens: number;
  stopIds: number[];
  sampling: SamplingOptions;
}

/** A request the prefill worker has prefilled: its first token and its KV cache, on their way to the decode worker. */
export interface Prefilled {
  firstToken: number;
  transfer: KvTransfer;
}

export type ToWorker =
  | ({ type: 'submit'; id: number } & SubmittedRequest)
  | ({ type: 'prefilled'; id: number } & SubmittedRequest & Prefilled)
  | { type: 'cancel'; id: number };

export interface TokenOutput {
  id: number;
  token: number | null;
  finishReason?: FinishReason;
}

export type FromWorker =
  | { type: 'ready'; description: string; maxPositions: number; vocabSize: number }
  | { type: 'step'; outputs: TokenOutput[]; running: number; waiting: number; kvPages: KvPages | null }
  | { type: 'rejected'; id: number; message: string }
  | ({ type: 'handoff'; id: number } & Prefilled)
  | { type: 'failed'; message: string };

/** The engine's page pool after a step: pages held by requests, of all (null: a model without a pool). */
export interface KvPages {
  used: number;
  total: number;
}
