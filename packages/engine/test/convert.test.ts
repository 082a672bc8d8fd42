// tiny-llm convert: the layout it writes is MLX's (checked against a fixture quantized by an independent
// script), every quantized value is within its step of the float weight, the engine and a float64 reader get
// the same logits from it, and bad input is refused with a clear message.
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tc from '@tiny-llm/tensor-core';
import { FIXTURES_DIR } from '@tiny-llm/tensor-core/testing';
import { expectGolden, Float64Qwen2, float64 } from '@tiny-llm/grading';
import { afterAll, describe, expect, it } from 'vitest';
import { convertModel } from '../src/convert.ts';
import { computeLogits } from '../src/logits.ts';
import { loadModel } from '../src/registry.ts';

const tmp = mkdtempSync(join(tmpdir(), 'tiny-llm-convert-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

const SOURCE = `${FIXTURES_DIR}models/qwen2-tiny`;
/** The same architecture quantized to 4 bits in groups of 64 by the fixtures' own script (PyTorch). */
const MLX_FIXTURE = `${FIXTURES_DIR}models/qwen2-tiny-4bit`;

const convertTo = (name: string, bits: 4 | 8, groupSize: 32 | 64 | 128, maxShardBytes?: number) => {
  const out = join(tmp, name);
  convertModel(SOURCE, out, { bits, groupSize, maxShardBytes });
  return out;
};

describe('convert --quantize', () => {
  it("writes MLX's layout: the names, shapes and config of a checkpoint quantized by the fixtures' script", () => {
    const out = convertTo('q4-g64', 4, 64);
    const ours = tc.openModelDir(out);
    const theirs = tc.openModelDir(MLX_FIXTURE);
    expect(ours.names.sort()).toEqual(theirs.names.sort());
    for (const name of theirs.names) {
      expect(ours.checkpoint.info(name).shape, name).toEqual(theirs.checkpoint.info(name).shape);
      if (name.endsWith('.weight') && theirs.checkpoint.info(name).dtype === 'uint32')
        expect(ours.checkpoint.info(name).dtype, name).toBe('uint32');
    }
    const config = JSON.parse(readFileSync(join(out, 'config.json'), 'utf8'));
    const fixtureConfig = JSON.parse(readFileSync(join(MLX_FIXTURE, 'config.json'), 'utf8'));
    expect(config.quantization).toEqual(fixtureConfig.quantization);
    expect(config.quantization_config).toEqual(fixtureConfig.quantization_config);
    expect(ours.config.quantization).toMatchObject({ bits: 4, groupSize: 64 });
  });

  it('every quantized value is within one step of the float weight, and most within half a step', () => {
    for (const [bits, groupSize] of [
      [4, 32],
      [8, 64],
    ] as const) {
      const converted = tc.openModelDir(convertTo(`bound-${bits}-${groupSize}`, bits, groupSize));
      const source = tc.openModelDir(SOURCE);
      for (const prefix of ['model.embed_tokens', 'model.layers.0.self_attn.k_proj', 'model.layers.1.mlp.down_proj']) {
        const w = source.weight(`${prefix}.weight`).toArray();
        const words = converted.weight(`${prefix}.weight`).toArray();
        const scales = converted.weight(`${prefix}.scales`).toArray();
        const biases = converted.weight(`${prefix}.biases`).toArray();
        const [rows, k] = source.checkpoint.info(`${prefix}.weight`).shape;
        let halfStep = 0;
        for (let r = 0; r < rows; r++) {
          for (let j = 0; j < k; j++) {
            const g = r * (k / groupSize) + Math.floor(j / groupSize);
            const value = float64.unpackQuantized(words, (r * k * bits) / 32, j, bits) * scales[g] + biases[g];
            const error = Math.abs(value - w[r * k + j]);
            if (error > Math.abs(scales[g]) * (1 + 1e-6)) {
              expect.fail(
                `${prefix} [${r}, ${j}] (${bits} bits, group ${groupSize}): ${value} for ${w[r * k + j]}, more than the step ${scales[g]} away`,
              );
            }
            if (error <= Math.abs(scales[g]) / 2 + 1e-7) halfStep++;
          }
        }
        // Only the far edge of a group may round past half a step (the step is adjusted to put 0 on a level).
        expect(halfStep / (rows * k), prefix).toBeGreaterThan(0.97);
      }
    }
  });

  it('the engine and a float64 reader of the converted files agree on the logits; sharded files load the same', async () => {
    const single = convertTo('q8-g64', 8, 64);
    const sharded = convertTo('q8-g64-sharded', 8, 64, 64 * 1024);
    expect(JSON.parse(readFileSync(join(sharded, 'model.safetensors.index.json'), 'utf8')).weight_map['model.norm.weight']).toMatch(
      /^model-\d{5}-of-\d{5}\.safetensors$/,
    );
    const ids = [1, 17, 300, 5, 42, 9, 11];
    const reference = new Float64Qwen2(single).logits(ids);
    for (const dir of [single, sharded]) {
      const model = await loadModel(dir, { exact: true });
      const logits = await computeLogits(model, ids);
      expectGolden(logits, reference, { atol: 1e-4, rtol: 0, what: `logits of ${dir.slice(tmp.length + 1)}` });
      logits.dispose();
    }
  });

  it('leaves in float, and names, the matrices whose columns do not split into groups', () => {
    const out = join(tmp, 'g128');
    const report = convertModel(SOURCE, out, { bits: 4, groupSize: 128 });
    const hidden = tc.openModelDir(SOURCE).config.hiddenSize;
    expect(hidden % 128).not.toBe(0);
    expect(report.ungrouped).toContain('model.embed_tokens.weight');
    expect(report.ungrouped).toContain('model.layers.0.self_attn.q_proj.weight');
    const converted = tc.openModelDir(out);
    for (const name of report.ungrouped) expect(converted.checkpoint.info(name).dtype, name).toBe('float32');
    // down_proj's columns are the MLP's intermediate size, which does split.
    expect(converted.isQuantized('model.layers.0.mlp.down_proj')).toBe(tc.openModelDir(SOURCE).config.intermediateSize % 128 === 0);
  });

  it('refuses an already quantized checkpoint and an output directory that is not empty', () => {
    expect(() => convertModel(MLX_FIXTURE, join(tmp, 'again'), { bits: 4, groupSize: 64 })).toThrow(
      /already quantized \(4 bits, group 64\)/,
    );
    const out = convertTo('taken', 4, 64);
    expect(() => convertModel(SOURCE, out, { bits: 8, groupSize: 64 })).toThrow(/already exists and is not empty/);
  });
});
