// Whole models on the GPU: a Qwen2/Qwen3 forward pass built from tensor-core's ops (written here, apart from
// the course's solutions), every weight and activation on the WebGPU backend, against the golden logits of
// the fixture models (transformers in float64). Weights stay as the checkpoint stores them: bf16 matrices are
// read by matmul as bf16 words, MLX 4-bit ones by fast.quantizedMatmul; openModelDir uploads each weight as
// the model asks for it. Each prompt runs once as a prefill, and once as a short prefill followed by one-token
// decode steps over a KV cache (strided copies into preallocated buffers), the way an engine serves it.
import { describe, expect, it } from 'vitest';
import * as tc from '../src/index.ts';
import { FIXTURES_DIR, useGpu } from '../src/testing.ts';

const gpu = useGpu();

type Weight = tc.Tensor | tc.QuantizedWeight;

interface Layer {
  inputNorm: tc.Tensor;
  postNorm: tc.Tensor;
  q: Weight;
  k: Weight;
  v: Weight;
  o: Weight;
  qBias: tc.Tensor | null;
  kBias: tc.Tensor | null;
  vBias: tc.Tensor | null;
  qNorm: tc.Tensor | null;
  kNorm: tc.Tensor | null;
  gate: Weight;
  up: Weight;
  down: Weight;
}

/** Each layer's keys and values [1, Hkv, capacity, D]; positions 0..offset - 1 are filled. */
interface Cache {
  keys: tc.Tensor[];
  values: tc.Tensor[];
}

function linear(x: tc.Tensor, w: Weight, bias: tc.Tensor | null = null): tc.Tensor {
  const y = w instanceof tc.QuantizedWeight ? tc.fast.quantizedMatmul(x, w) : tc.matmul(x, tc.transpose(w));
  return bias ? tc.add(y, bias) : y;
}

class GpuQwen {
  readonly config: tc.ModelConfig;
  readonly layers: Layer[] = [];
  /** The embedding rows for lookups (a quantized table is dequantized for them) and the output head. */
  readonly embedding: tc.Tensor;
  readonly head: Weight;
  readonly norm: tc.Tensor;
  readonly rope: tc.fast.RopeTables;

  /** md hands out its weights on the GPU (openModelDir's device). */
  constructor(
    md: tc.ModelDir,
    readonly device: tc.WebGPUBackend,
  ) {
    this.config = md.config;
    const weight = (prefix: string) => md.linear(prefix).weight;
    const bias = (prefix: string) => md.linear(prefix).bias;
    const vector = (name: string) => md.weight(name);
    const optional = (name: string) => (md.has(name) ? vector(name) : null);
    const table = md.linear('model.embed_tokens').weight;
    // A quantized table is dequantized on the GPU (tc.dequantize runs where its weight is).
    this.embedding = table instanceof tc.QuantizedWeight ? tc.dequantize(table) : table;
    this.head = this.config.tieWordEmbeddings ? weight('model.embed_tokens') : weight('lm_head');
    this.norm = vector('model.norm.weight');
    for (let i = 0; i < this.config.numHiddenLayers; i++) {
      const p = `model.layers.${i}`;
      this.layers.push({
        inputNorm: vector(`${p}.input_layernorm.weight`),
        postNorm: vector(`${p}.post_attention_layernorm.weight`),
        q: weight(`${p}.self_attn.q_proj`),
        k: weight(`${p}.self_attn.k_proj`),
        v: weight(`${p}.self_attn.v_proj`),
        o: weight(`${p}.self_attn.o_proj`),
        qBias: bias(`${p}.self_attn.q_proj`),
        kBias: bias(`${p}.self_attn.k_proj`),
        vBias: bias(`${p}.self_attn.v_proj`),
        qNorm: optional(`${p}.self_attn.q_norm.weight`),
        kNorm: optional(`${p}.self_attn.k_norm.weight`),
        gate: weight(`${p}.mlp.gate_proj`),
        up: weight(`${p}.mlp.up_proj`),
        down: weight(`${p}.mlp.down_proj`),
      });
    }
    const tables = tc.fast.ropeTables(this.config.headDim, 64, this.config.ropeTheta);
    this.rope = { dims: tables.dims, cos: tc.toDevice(tables.cos, device), sin: tc.toDevice(tables.sin, device) };
  }

  newCache(capacity: number): Cache {
    const { numKeyValueHeads: hkv, headDim: d } = this.config;
    const buffers = () => this.layers.map(() => tc.zeros([1, hkv, capacity, d], { device: this.device }));
    return { keys: buffers(), values: buffers() };
  }

  /** ids [1, L] at positions offset.. -> logits [1, L, vocab]; appends the tokens' keys and values to the cache. */
  forward(ids: tc.Tensor, cache: Cache, offset: number): tc.Tensor {
    const { numAttentionHeads: h, numKeyValueHeads: hkv, headDim: d, rmsNormEps: eps } = this.config;
    const l = ids.shape[1];
    return tc.tidy(() => {
      let x = tc.astype(tc.take(this.embedding, ids), 'float32');
      this.layers.forEach((layer, i) => {
        const n1 = tc.fast.rmsNorm(x, layer.inputNorm, eps);
        let q = tc.reshape(linear(n1, layer.q, layer.qBias), [1, l, h, d]);
        let k = tc.reshape(linear(n1, layer.k, layer.kBias), [1, l, hkv, d]);
        const v = tc.reshape(linear(n1, layer.v, layer.vBias), [1, l, hkv, d]);
        if (layer.qNorm && layer.kNorm) {
          q = tc.fast.rmsNorm(q, layer.qNorm, eps);
          k = tc.fast.rmsNorm(k, layer.kNorm, eps);
        }
        q = tc.fast.rope(q, this.rope, offset);
        k = tc.fast.rope(k, this.rope, offset);
        // Append to the cache in place (a strided copy into its slice), then attend over all cached positions.
        const slot: tc.SliceSpec[] = [null, null, [offset, offset + l]];
        this.device.unary('copy', tc.transpose(k, [0, 2, 1, 3]), tc.slice(cache.keys[i], slot));
        this.device.unary('copy', tc.transpose(v, [0, 2, 1, 3]), tc.slice(cache.values[i], slot));
        const seen: tc.SliceSpec[] = [null, null, [0, offset + l]];
        const attn = tc.fast.sdpa(tc.transpose(q, [0, 2, 1, 3]), tc.slice(cache.keys[i], seen), tc.slice(cache.values[i], seen), {
          mask: 'causal',
        });
        x = tc.add(x, linear(tc.reshape(tc.transpose(attn, [0, 2, 1, 3]), [1, l, h * d]), layer.o));
        const n2 = tc.fast.rmsNorm(x, layer.postNorm, eps);
        x = tc.add(x, linear(tc.mul(tc.silu(linear(n2, layer.gate)), linear(n2, layer.up)), layer.down));
      });
      return linear(tc.fast.rmsNorm(x, this.norm, eps), this.head);
    });
  }
}

const MODELS = ['qwen2-tiny', 'qwen2-tiny-bf16', 'qwen2-tiny-4bit', 'qwen2-tiny-untied', 'qwen3-tiny'];

/** The largest |got - expected| of one prompt's logits rows [from, to). */
function worstError(got: ArrayLike<number>, golden: tc.Tensor, from: number, to: number): number {
  const vocab = golden.shape[1];
  const expected = golden.toArray();
  let worst = 0;
  for (let i = from * vocab; i < to * vocab; i++) worst = Math.max(worst, Math.abs(got[i - from * vocab] - expected[i]));
  return worst;
}

describe.each(MODELS)('%s on the GPU', (name) => {
  const dir = `${FIXTURES_DIR}models/${name}`;
  const golden = tc.readSafetensors(`${dir}/golden.safetensors`);
  const prompts: number[][] = [];
  for (let i = 0; golden.has(`prompt${i}`); i++) prompts.push(Array.from(golden.get(`prompt${i}`).toArray()));
  const ids = (tokens: number[]) => tc.tensor(tokens, { shape: [1, tokens.length], dtype: 'int32', device: gpu() });

  it('prefill: the logits of every prompt match the goldens within 1e-4', async () => {
    const model = new GpuQwen(tc.openModelDir(dir, { device: gpu() }), gpu());
    for (const [p, tokens] of prompts.entries()) {
      const cache = model.newCache(tokens.length);
      const logits = model.forward(ids(tokens), cache, 0);
      expect(logits.shape).toEqual([1, tokens.length, model.config.vocabSize]);
      expect(worstError(await logits.data(), golden.get(`prompt${p}.logits`), 0, tokens.length), `prompt ${p}`).toBeLessThan(1e-4);
    }
  });

  it('decode: a two-token prefill, then one token at a time over the KV cache, matches every row', async () => {
    const model = new GpuQwen(tc.openModelDir(dir, { device: gpu() }), gpu());
    const longest = prompts.reduce((a, b) => (b.length > a.length ? b : a));
    const p = prompts.indexOf(longest);
    const cache = model.newCache(longest.length);
    const steps = [[0, 2], ...Array.from({ length: longest.length - 2 }, (_, i) => [i + 2, i + 3])];
    for (const [from, to] of steps) {
      const logits = model.forward(ids(longest.slice(from, to)), cache, from);
      expect(worstError(await logits.data(), golden.get(`prompt${p}.logits`), from, to), `positions ${from}..${to - 1}`).toBeLessThan(1e-4);
    }
  });
});
