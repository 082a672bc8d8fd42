// The golden checks of one fixture model with the week 1 model's API (embedding, layers, norm, forward),
// built from @tiny-llm/grading: each check names the coordinates of the worst value and the mistake it
// matches (the model's RoPE base left at 10000, the q/k/v biases left out), and greedy tokens are checked
// only where the golden lead is safe.
import * as tc from '@tiny-llm/tensor-core';
import {
  batchOf,
  expectGolden,
  expectGreedyTokens,
  expectLayerOutput,
  expectPromptLogits,
  goldenModel,
  LOGITS_ATOL,
} from '@tiny-llm/grading';
import { describe, it } from 'vitest';
import { Qwen2ModelWeek1 } from '@solution/week1';

/**
 * Prompt 0 layer by layer (each block given the golden input of that block, so an error shows in the first
 * layer that has it), then every prompt's logits and its 16 greedy tokens.
 */
export function describeGoldenModel(title: string, name: string): void {
  const golden = goldenModel(name);
  // Loaded by the first test that needs it (a failed load fails each test with its own error).
  let loaded: Qwen2ModelWeek1 | undefined;
  const model = () => (loaded ??= Qwen2ModelWeek1.load(golden.dir));
  const last = golden.numLayers - 1;

  describe(`${title}: ${name}`, () => {
    it('embedding.forward(prompt 0) = the input of layer 0', () => {
      const ids = tc.tensor([golden.prompts[0].ids], { dtype: 'int32' });
      expectGolden(model().embedding.forward(ids), batchOf(golden.layerIn(0)), {
        atol: LOGITS_ATOL,
        what: 'embedding',
        axes: ['b', 'l', 'e'],
      });
    });

    for (let l = 0; l < golden.numLayers; l++) {
      it(`layers[${l}].forward(golden input of layer ${l}, 'causal') = its golden output`, () => {
        expectLayerOutput(model().layers[l].forward(batchOf(golden.layerIn(l)), 'causal'), golden, l);
      });
    }

    it(`norm.forward(golden output of layer ${last}) = the final hidden state`, () => {
      const out = model().norm.forward(batchOf(golden.layerOut(last)));
      expectGolden(out, batchOf(golden.normOut), { atol: LOGITS_ATOL, what: 'final norm', axes: ['b', 'l', 'e'] });
    });

    for (const prompt of golden.prompts) {
      it(`prompt ${prompt.index} (${prompt.ids.length} tokens): the logits of every position (atol ${LOGITS_ATOL})`, () => {
        expectPromptLogits(model().forward(tc.tensor([prompt.ids], { dtype: 'int32' })), golden, prompt);
      });
    }

    for (const prompt of golden.prompts) {
      it(`prompt ${prompt.index}: ${prompt.greedy.length} greedy tokens, one full forward pass each`, () => {
        const ids = [...prompt.ids];
        for (let step = 0; step < prompt.greedy.length; step++) {
          const next = tc.tidy(() => {
            const logits = model().forward(tc.tensor([ids], { dtype: 'int32' })); // [1, L, vocab]
            return tc.argmax(tc.slice(logits, [0, -1]), -1).item(); // the last position's best token
          });
          ids.push(next);
        }
        expectGreedyTokens(ids.slice(prompt.ids.length), golden, prompt);
      });
    }
  });
}
