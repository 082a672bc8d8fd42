// `tiny-llm logits`: the logits of every position of a prompt, float32 [L, vocab], for parity checks against
// other implementations (transformers, MLX): written to a safetensors file as `logits`, or summarised.
import * as tc from '@tiny-llm/tensor-core';
import type { Tensor } from '@tiny-llm/tensor-core';
import { UsageError, UserError } from './errors.ts';
import type { EngineModel } from './session.ts';

/** "1,2,3" -> [1, 2, 3]; a usage error for anything that is not a list of non-negative integers. */
export function parseIds(text: string): number[] {
  const parts = text.split(',').map((p) => p.trim());
  if (parts.length === 0 || parts.some((p) => !/^\d+$/.test(p))) {
    throw new UsageError(`--ids: expected a comma-separated list of token ids (e.g. 1,2,3), got ${JSON.stringify(text)}`);
  }
  return parts.map(Number);
}

/** Checks the ids against the model (vocabulary, context) and returns their logits [L, vocab], on the CPU. */
export async function computeLogits(model: EngineModel, ids: readonly number[]): Promise<Tensor> {
  const { vocabSize, maxPositionEmbeddings } = model.config;
  if (ids.length === 0) throw new UserError('no token ids given');
  const bad = ids.find((id) => id >= vocabSize || !Number.isSafeInteger(id));
  if (bad !== undefined) throw new UserError(`token id ${bad} is outside the vocabulary (0..${vocabSize - 1})`);
  if (ids.length > maxPositionEmbeddings) {
    throw new UserError(`${ids.length} tokens are more than the model's context of ${maxPositionEmbeddings} (max_position_embeddings)`);
  }
  const logits = model.allLogits(ids);
  let out = logits;
  if (logits.dtype !== 'float32' || !logits.isContiguous) {
    out = tc.contiguous(tc.astype(logits, 'float32'));
    logits.dispose();
  }
  // A model on the GPU computed them there: the file and the summary are written from the CPU.
  const onCpu = await tc.toCPU(out);
  if (onCpu !== out) out.dispose();
  return onCpu;
}

export function writeLogits(path: string, logits: Tensor, ids: readonly number[]): void {
  try {
    tc.saveSafetensors(path, { logits }, { ids: JSON.stringify(ids) });
  } catch (err) {
    throw new UserError(`--out ${path}: cannot write it (${(err as Error).message.split('\n')[0]})`);
  }
}

/** A readable summary: the top tokens of each position. */
export function formatLogits(logits: Tensor, ids: readonly number[], top = 5, label?: (id: number) => string): string {
  const [l, v] = logits.shape;
  const data = logits.toArray() as Float32Array;
  const lines = [`logits float32 [${l}, ${v}]`];
  for (let i = 0; i < l; i++) {
    const row = data.subarray(i * v, (i + 1) * v);
    const order = Array.from({ length: v }, (_, j) => j)
      .sort((a, b) => row[b] - row[a])
      .slice(0, top);
    const name = (id: number) => (label ? `${id} ${JSON.stringify(label(id))}` : `${id}`);
    lines.push(`  ${i} (after ${name(ids[i])}): ${order.map((j) => `${name(j)}: ${row[j].toFixed(4)}`).join(', ')}`);
  }
  return lines.join('\n');
}
