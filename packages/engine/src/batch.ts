// `tiny-llm batch`: many prompts through continuous batching (chapter 2.6's Scheduler, with chapter 2.7's
// chunked prefill): a JSON-lines file in, one JSON line per prompt out, in input order.
//
//   in:  {"prompt": "...", "max_tokens": 48, "temperature": 0, "top_k": 40, "top_p": 0.9, "min_p": 0.05,
//         "seed": 1, "ignore_eos": true}                       (only "prompt" is required)
//   out: {"index": 0, "text": "...", "tokens": 48, "finish_reason": "length"}
import { readFileSync } from 'node:fs';
import type { Tensor } from '@tiny-llm/tensor-core';
import type { GenerationRequest, SchedulerOptions, StepOutput } from '@tiny-llm/reference/week2';
import type { TinyTokenizer } from '@tiny-llm/tokenizer';
import { UserError } from './errors.ts';

/** One line of the prompts file, checked. */
export interface BatchPrompt {
  prompt: string;
  maxTokens: number;
  temperature: number;
  topK?: number;
  topP?: number;
  minP?: number;
  seed?: number;
  ignoreEos: boolean;
}

const FIELDS: Record<string, (v: unknown) => boolean> = {
  prompt: (v) => typeof v === 'string',
  max_tokens: (v) => Number.isInteger(v) && (v as number) >= 1,
  temperature: (v) => typeof v === 'number' && v >= 0,
  top_k: (v) => Number.isInteger(v) && (v as number) >= 1,
  top_p: (v) => typeof v === 'number' && v > 0 && v <= 1,
  min_p: (v) => typeof v === 'number' && v >= 0 && v <= 1,
  seed: (v) => Number.isInteger(v),
  ignore_eos: (v) => typeof v === 'boolean',
};

/** Reads a JSON-lines prompts file; every error names the line and the field. */
export function readPrompts(path: string, defaultMaxTokens: number): BatchPrompt[] {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new UserError(`--prompts ${path}: cannot read it (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  }
  const prompts: BatchPrompt[] = [];
  text.split('\n').forEach((line, i) => {
    if (line.trim() === '') return;
    const where = `--prompts ${path}, line ${i + 1}`;
    let value: unknown;
    try {
      value = JSON.parse(line);
    } catch (err) {
      throw new UserError(`${where}: not JSON (${(err as Error).message})`);
    }
    if (typeof value !== 'object' || value === null || Array.isArray(value))
      throw new UserError(`${where}: expected an object like {"prompt": "..."}`);
    const record = value as Record<string, unknown>;
    for (const [key, v] of Object.entries(record)) {
      const ok = FIELDS[key];
      if (!ok) throw new UserError(`${where}: unknown field "${key}" (fields: ${Object.keys(FIELDS).join(', ')})`);
      if (!ok(v)) throw new UserError(`${where}: bad value for "${key}": ${JSON.stringify(v)}`);
    }
    if (record.prompt === undefined) throw new UserError(`${where}: "prompt" is required`);
    prompts.push({
      prompt: record.prompt as string,
      maxTokens: (record.max_tokens as number | undefined) ?? defaultMaxTokens,
      temperature: (record.temperature as number | undefined) ?? 0,
      topK: record.top_k as number | undefined,
      topP: record.top_p as number | undefined,
      minP: record.min_p as number | undefined,
      seed: record.seed as number | undefined,
      ignoreEos: (record.ignore_eos as boolean | undefined) ?? false,
    });
  });
  if (prompts.length === 0) throw new UserError(`--prompts ${path}: no prompts in it`);
  return prompts;
}

/** What runBatch needs of a scheduler (chapter 2.6's, either solution's). */
export interface BatchScheduler {
  submit(request: GenerationRequest): number;
  step(): Promise<StepOutput[]>;
  cancel(id: number): boolean;
  readonly idle: boolean;
  readonly counts: { running: number; waiting: number };
}

export interface BatchResult {
  index: number;
  text: string;
  tokens: number;
  finish_reason: 'stop' | 'length';
}

/**
 * Runs every prompt through the scheduler, all submitted at once (the scheduler admits them as slots free),
 * and returns the results in input order with the decode throughput over the whole run.
 */
export async function runBatch(
  scheduler: BatchScheduler,
  tokenizer: TinyTokenizer,
  prompts: BatchPrompt[],
  samplerOf: (p: BatchPrompt) => ((logits: Tensor) => Tensor) | undefined,
): Promise<{ results: BatchResult[]; seconds: number; generated: number }> {
  const byId = new Map<number, { index: number; tokens: number[]; finish?: 'stop' | 'length' }>();
  prompts.forEach((p, index) => {
    const promptIds = tokenizer.encode(p.prompt);
    if (promptIds.length === 0) throw new UserError(`prompt ${index}: the prompt is empty: there is no token to continue from`);
    let id: number;
    try {
      id = scheduler.submit({
        promptIds,
        maxTokens: p.maxTokens,
        stopIds: p.ignoreEos ? [] : tokenizer.eosTokenIds,
        sampler: samplerOf(p),
      });
    } catch (err) {
      throw new UserError(`prompt ${index}: ${(err as Error).message.replace(/^\w*Scheduler\.submit: /, '')}`);
    }
    byId.set(id, { index, tokens: [] });
  });
  const t0 = performance.now();
  let generated = 0;
  while (!scheduler.idle) {
    for (const out of await scheduler.step()) {
      const entry = byId.get(out.id)!;
      if (out.token !== null) {
        entry.tokens.push(out.token);
        generated++;
      }
      if (out.finishReason) entry.finish = out.finishReason === 'stop' ? 'stop' : 'length';
    }
  }
  const seconds = (performance.now() - t0) / 1e3;
  const results = [...byId.values()]
    .sort((a, b) => a.index - b.index)
    .map((e) => ({ index: e.index, text: tokenizer.decode(e.tokens), tokens: e.tokens.length, finish_reason: e.finish ?? 'length' }));
  return { results, seconds, generated };
}

export type { SchedulerOptions };
