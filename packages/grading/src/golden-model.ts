// The fixture models (fixtures/models/<name>: config, weights and golden.safetensors computed in float64 by
// PyTorch + transformers) and the checks every week runs on them: logits against the goldens, with the
// model's known mistakes as diagnoses, and greedy tokens where the golden lead is safe to check.
import * as tc from '@tiny-llm/tensor-core';
import type { Tensor } from '@tiny-llm/tensor-core';
import { FIXTURES_DIR } from '@tiny-llm/tensor-core/testing';
import { assert } from 'vitest';
import { expectGolden } from './checks.ts';
import { Float64Qwen2, topTwo } from './float64-model.ts';
import { modelMistakes } from './mistakes.ts';

/** The logits tolerance of the model tests. */
export const LOGITS_ATOL = 1e-4;
/**
 * A greedy token is checked only where its golden lead over the runner-up is at least this: ten times the
 * logits tolerance, so that an output within tolerance cannot flip it.
 */
export const SAFE_MARGIN = 10 * LOGITS_ATOL;

export interface GoldenPrompt {
  index: number;
  ids: number[];
  /** float32 [L, V] */
  logits: Tensor;
  /** The 16 greedy tokens that follow (generated without stopping). */
  greedy: number[];
}

export interface GoldenModel {
  name: string;
  dir: string;
  prompts: GoldenPrompt[];
  /** Prompt 0's hidden state at each layer's input and output, [L, E], and after the final norm. */
  layerIn(l: number): Tensor;
  layerOut(l: number): Tensor;
  normOut: Tensor;
  numLayers: number;
  /** The same model in float64 plain loops (float64-model.ts), built on first use. */
  float64(): Float64Qwen2;
}

/** Reads a fixture model's goldens; throws at collection time if they are not all there. */
export function goldenModel(name: string): GoldenModel {
  const dir = `${FIXTURES_DIR}models/${name}`;
  const golden = tc.readSafetensors(`${dir}/golden.safetensors`);
  const count = golden.names.filter((n) => /^prompt\d+$/.test(n)).length;
  const numLayers = golden.names.filter((n) => /^prompt0\.layer\d+\.in$/.test(n)).length;
  if (count === 0 || String(count) !== golden.metadata.prompts || numLayers === 0) {
    throw new Error(
      `${dir}/golden.safetensors: expected ${golden.metadata.prompts} prompts and per-layer goldens, found ${count} prompts and ${numLayers} layers`,
    );
  }
  const ints = (t: Tensor) => Array.from(t.toArray());
  const prompts = Array.from({ length: count }, (_, i) => ({
    index: i,
    ids: ints(golden.get(`prompt${i}`)),
    logits: golden.get(`prompt${i}.logits`),
    greedy: ints(golden.get(`prompt${i}.greedy`)),
  }));
  let model: Float64Qwen2 | undefined;
  return {
    name,
    dir,
    prompts,
    numLayers,
    layerIn: (l) => golden.get(`prompt0.layer${l}.in`),
    layerOut: (l) => golden.get(`prompt0.layer${l}.out`),
    normOut: golden.get('prompt0.norm.out'),
    float64: () => (model ??= new Float64Qwen2(dir)),
  };
}

/** [L, ...] -> [1, L, ...]: a golden of one sequence as a batch of one. */
export const batchOf = (t: Tensor): Tensor => tc.expandDims(t, 0);

/** Logits [1, L, V] of a prompt against its golden, diagnosed against the model's known mistakes. */
export function expectPromptLogits(logits: Tensor, model: GoldenModel, prompt: GoldenPrompt, what = `prompt ${prompt.index} logits`): void {
  const float64 = model.float64();
  expectGolden(logits, batchOf(prompt.logits), {
    atol: LOGITS_ATOL,
    what,
    axes: ['b', 'l', 'v'],
    mistakes: modelMistakes(float64, (variant) => float64.logits(prompt.ids, variant)),
  });
}

/** Layer l's output [1, L, E] for its golden input, diagnosed against the model's known mistakes. */
export function expectLayerOutput(out: Tensor, model: GoldenModel, l: number): void {
  const float64 = model.float64();
  const input = { shape: [1, ...model.layerIn(l).shape], data: Float64Array.from(model.layerIn(l).toArray()) };
  expectGolden(out, batchOf(model.layerOut(l)), {
    atol: LOGITS_ATOL,
    what: `layer ${l}`,
    axes: ['b', 'l', 'e'],
    mistakes: modelMistakes(float64, (variant) => float64.layer(l, input, variant)),
  });
}

/**
 * Greedy tokens against the golden ones. `generated[t]` is the model's token after the prompt and the
 * golden tokens before t (or its own, which are the same until they differ). Where the golden lead of the
 * best token over the runner-up is under SAFE_MARGIN, a different pick is a near-tie within tolerance: the
 * check accepts it and stops there (every later token follows from it).
 */
export function expectGreedyTokens(generated: readonly number[], model: GoldenModel, prompt: GoldenPrompt): void {
  const sequence = [...prompt.ids, ...prompt.greedy];
  const logits = model.float64().logits(sequence.slice(0, -1), {});
  const vocab = model.float64().config.vocabSize;
  for (let t = 0; t < prompt.greedy.length; t++) {
    const position = prompt.ids.length - 1 + t;
    const { margin } = topTwo(logits.data.subarray(position * vocab, (position + 1) * vocab));
    const [got, want] = [generated[t], prompt.greedy[t]];
    if (got === want) continue;
    if (margin < SAFE_MARGIN) return; // a near-tie: either pick is within tolerance
    const why =
      argmaxAxisMistake(generated, prompt.ids.length) ??
      'the logits at this position are wrong, or the pick is not the argmax over the vocabulary (the last axis).';
    assert.fail(
      `greedy token ${t} (position ${position}): got ${got}, expected ${want}, which leads the runner-up by ${margin.toPrecision(3)} ` +
        `in the golden logits (far above the tolerance ${LOGITS_ATOL}): ${why}`,
    );
  }
}

/**
 * What generated tokens say about the axis their argmax ran over: all 0 is the argmax over an axis of size 1
 * (the batch of [1, V]), all below the sequence length the argmax over the positions of [1, L, V].
 */
export function argmaxAxisMistake(generated: readonly number[], promptLength: number): string | undefined {
  if (generated.length === 0) return undefined;
  if (generated.every((t) => t === 0)) {
    return 'every token is 0, the argmax over an axis of size 1 (the batch axis of the [1, V] logits?): take it over the vocabulary, axis -1.';
  }
  if (generated.every((t, i) => t < promptLength + i)) {
    return 'every token is below the sequence length, as from an argmax over the positions (axis 1 of [1, L, V]): take it over the vocabulary, axis -1.';
  }
  return undefined;
}
