// The WebGPU backend (DESIGN 3.5): storage is a GPUBuffer, kernels are WGSL compute shaders run by Dawn
// (the `webgpu` package): Vulkan, Metal or D3D12 on a real GPU, Mesa's software GLES in CI.
//
// Every buffer binds as array<u32> (f32 is bitcast): there is no shader-f16 on some targets, so bf16/f16
// stay as 16-bit halves of u32 words and 1-byte dtypes as bytes of them, unpacked in the shader. Tensor
// offsets and strides reach the shaders in element units through a small uniform block ("params").
// Kernels are recorded into one pending command encoder and submitted together (on read, flush(), or every
// MAX_PENDING dispatches), because a queue submit per op costs more than most small ops themselves.
import { itemSize, isFloating, storageView, type DType, type StorageArray } from '../dtype.ts';
import { contiguousStrides, sizeOf } from '../shape.ts';
import type { Tensor } from '../tensor.ts';
import { unsupported, type Backend, type BinaryOp, type ReduceOp, type Storage, type UnaryOp } from './backend.ts';

export interface WebGPUOptions {
  /**
   * A Dawn backend to use ('vulkan', 'metal', 'd3d12', 'opengles', 'opengl', 'null'); defaults to env
   * TINY_LLM_WEBGPU_BACKEND, else the platform's native API with Mesa's GLES as the fallback.
   */
  backend?: string;
  powerPreference?: GPUPowerPreference;
}

export interface WebGPUBackendOptions {
  /** Caps the invocations per workgroup the kernels use (defaults to the device limit). */
  maxInvocations?: number;
  /** Destroy the device in destroy(); false for a backend that shares another one's device. */
  ownsDevice?: boolean;
  /** Called once by destroy() (initWebGPU uses it to forget its instance). */
  onDestroy?: () => void;
  adapterName?: string;
}

const MAX_DIMS = 6;
/** Dispatches recorded before the pending encoder is submitted anyway. */
const MAX_PENDING = 128;
/** Distinct parameter blocks kept on the device (decode repeats the same shapes every token). */
const MAX_PARAM_BUFFERS = 512;

// GPUBufferUsage / GPUMapMode values (fixed by the spec), so that nothing has to be installed on globalThis.
const USAGE = { MAP_READ: 0x1, COPY_SRC: 0x4, COPY_DST: 0x8, UNIFORM: 0x40, STORAGE: 0x80 } as const;
const MAP_MODE_READ = 0x1;

export class GpuStorage implements Storage {
  refs = 0;
  released = false;
  constructor(
    readonly backend: WebGPUBackend,
    readonly buffer: GPUBuffer,
    /** The logical size; the buffer itself is rounded up to whole 4-byte words. */
    readonly byteLength: number,
  ) {}
}

/** A tensor as the kernels see it. */
interface View {
  buffer: GPUBuffer;
  dtype: DType;
  shape: readonly number[];
  strides: readonly number[];
  offset: number;
}

// ---------------------------------------------------------------------------------------------------------
// Device creation

let instance: Promise<WebGPUBackend> | null = null;

/**
 * The WebGPU backend, created on the first call; later calls return the same backend (their options are
 * ignored) until it is destroyed.
 */
export function initWebGPU(options: WebGPUOptions = {}): Promise<WebGPUBackend> {
  instance ??= createBackend(options).catch((err) => {
    instance = null;
    throw err;
  });
  return instance;
}

interface Attempt {
  label: string;
  flags: string[];
  featureLevels: ('core' | 'compatibility')[];
}

function attempts(requested: string | undefined): Attempt[] {
  if (requested) {
    return [{ label: requested, flags: [`backend=${requested}`], featureLevels: ['core', 'compatibility'] }];
  }
  return [
    { label: 'default (Vulkan/Metal/D3D12)', flags: [], featureLevels: ['core'] },
    // OpenGL ES only offers WebGPU's compatibility feature level.
    { label: 'opengles', flags: ['backend=opengles'], featureLevels: ['compatibility'] },
  ];
}

async function createBackend(options: WebGPUOptions): Promise<WebGPUBackend> {
  const { create } = await import('webgpu');
  const requested = options.backend || process.env.TINY_LLM_WEBGPU_BACKEND || undefined;
  const failures: string[] = [];
  for (const attempt of attempts(requested)) {
    // Mesa's EGL needs a platform when there is no display; surfaceless works headless.
    if (attempt.flags.some((f) => f.includes('opengl')) && process.platform === 'linux') {
      process.env.EGL_PLATFORM ??= 'surfaceless';
    }
    try {
      let gpu: GPU | null = create(attempt.flags);
      for (const featureLevel of attempt.featureLevels) {
        const adapter = await gpu.requestAdapter({ featureLevel, powerPreference: options.powerPreference });
        if (!adapter) continue;
        const device = await requestDevice(adapter);
        const info = adapter.info;
        const adapterName = [info.vendor, info.architecture, info.device, info.description].filter(Boolean).join(' ');
        return new WebGPUBackend(device, {
          ownsDevice: true,
          adapterName: `${adapterName || 'unknown adapter'} (${attempt.label}, ${featureLevel})`,
          // Dawn keeps the process alive while the object from create() is referenced: drop it on destroy.
          onDestroy: () => {
            gpu = null;
            instance = null;
          },
        });
      }
      failures.push(`${attempt.label}: no adapter`);
    } catch (err) {
      failures.push(`${attempt.label}: ${(err as Error).message}`);
    }
  }
  throw new Error(
    `initWebGPU: no WebGPU adapter found (tried ${failures.join('; ')}). On headless Linux, install Mesa ` +
      `(libegl1, libgles2, mesa drivers) and run with EGL_PLATFORM=surfaceless, or Mesa's lavapipe for Vulkan; ` +
      `set TINY_LLM_WEBGPU_BACKEND (vulkan, metal, d3d12, opengles) to choose a backend.`,
  );
}

/** A device with the adapter's own limits for what tensors need (the defaults cap buffers at 128-256 MiB). */
async function requestDevice(adapter: GPUAdapter): Promise<GPUDevice> {
  const names = [
    'maxBufferSize',
    'maxStorageBufferBindingSize',
    'maxComputeWorkgroupStorageSize',
    'maxComputeInvocationsPerWorkgroup',
    'maxComputeWorkgroupSizeX',
    'maxComputeWorkgroupSizeY',
    'maxComputeWorkgroupSizeZ',
    'maxComputeWorkgroupsPerDimension',
    'maxStorageBuffersPerShaderStage',
  ] as const;
  const requiredLimits: Record<string, number> = {};
  for (const name of names) requiredLimits[name] = adapter.limits[name];
  const wanted: GPUFeatureName[] = ['shader-f16', 'subgroups', 'timestamp-query'];
  const requiredFeatures = wanted.filter((f) => adapter.features.has(f));
  return adapter.requestDevice({ requiredLimits, requiredFeatures });
}

// ---------------------------------------------------------------------------------------------------------
// WGSL building blocks

/** The uniform block of i32 parameters; vec4s because uniform arrays have a 16-byte element stride. */
function paramsDecl(count: number): string {
  return `struct Params { v: array<vec4<i32>, ${Math.max(1, Math.ceil(count / 4))}> }
@group(0) @binding(0) var<uniform> params: Params;
fn p(i: u32) -> i32 { return params.v[i / 4u][i % 4u]; }
`;
}

/** Conversions, bit-exact with the CPU backend (native/include/tiny_llm/extension.h), and stable math. */
const WGSL_HELPERS = /* wgsl */ `
fn is_nan(v: f32) -> bool { return (bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u; }

// bf16 is the top half of an f32: widening is a shift, narrowing rounds to nearest even.
fn bf16_to_f32(h: u32) -> f32 { return bitcast<f32>(h << 16u); }
fn f32_to_bf16(v: f32) -> u32 {
  let u = bitcast<u32>(v);
  if ((u & 0x7fffffffu) > 0x7f800000u) { return (u >> 16u) | 0x40u; }  // quiet NaN, keep sign
  return (u + 0x7fffu + ((u >> 16u) & 1u)) >> 16u;
}

// f16 by hand rather than unpack2x16float/pack2x16float, whose rounding and subnormals are not pinned down.
fn f16_to_f32(h: u32) -> f32 {
  let sign = (h & 0x8000u) << 16u;
  let e = (h >> 10u) & 0x1fu;
  let m = h & 0x3ffu;
  if (e == 0x1fu) { return bitcast<f32>(sign | 0x7f800000u | (m << 13u)); }
  if (e == 0u) {
    let v = f32(m) * 5.9604644775390625e-8;  // subnormal: m * 2^-24, exact in f32
    return select(v, -v, sign != 0u);
  }
  return bitcast<f32>(sign | ((e + 112u) << 23u) | (m << 13u));
}
fn f32_to_f16(v: f32) -> u32 {
  let u = bitcast<u32>(v);
  let sign = (u >> 16u) & 0x8000u;
  let a = u & 0x7fffffffu;
  if (a > 0x7f800000u) { return sign | 0x7e00u | ((a >> 13u) & 0x3ffu); }  // NaN
  if (a >= 0x477ff000u) { return sign | 0x7c00u; }  // rounds to >= 65520: infinity
  if (a < 0x38800000u) {  // subnormal result: shift the whole significand, round to nearest even
    if (a < 0x33000000u) { return sign; }
    let shift = 126u - (a >> 23u);
    let mant = (a & 0x7fffffu) | 0x800000u;
    let half = 1u << (shift - 1u);
    let rest = mant & ((1u << shift) - 1u);
    var q = mant >> shift;
    if (rest > half || (rest == half && (q & 1u) == 1u)) { q += 1u; }
    return sign | q;
  }
  let r = a + 0xfffu + ((a >> 13u) & 1u);
  return sign | (((r >> 13u) - (112u << 10u)) & 0xffffu);
}

// Integer stores truncate toward zero and saturate; NaN becomes 0.
fn f32_to_i32(v: f32) -> i32 {
  if (is_nan(v)) { return 0; }
  if (v >= 2147483648.0) { return 2147483647; }
  if (v <= -2147483648.0) { return bitcast<i32>(0x80000000u); }
  return i32(v);
}
fn f32_to_u32(v: f32) -> u32 {
  if (is_nan(v) || v <= 0.0) { return 0u; }
  if (v >= 4294967296.0) { return 0xffffffffu; }
  return u32(v);
}

// exp only ever sees -|v|, so neither tail overflows to inf/inf.
fn sigmoid_f(v: f32) -> f32 {
  let z = exp(-abs(v));
  let s = 1.0 / (1.0 + z);
  return select(z * s, s, v >= 0.0);
}

// GPU sin/cos are only accurate near [-pi, pi]: reduce by 2pi first, in two parts so k * C1 stays exact.
fn reduce_angle(v: f32) -> f32 {
  let k = round(v * 0.15915494309189535);
  return (v - k * 6.28125) - k * 0.0019353071795864769;
}

// pow of a negative base is defined for integer exponents (WGSL's pow is not).
fn pow_f(a: f32, b: f32) -> f32 {
  if (b == 0.0) { return 1.0; }
  let r = pow(abs(a), b);
  if (a >= 0.0 || is_nan(a)) { return r; }
  if (fract(b) != 0.0) { return sqrt(a); }  // a < 0 here: sqrt gives the NaN we want
  return select(r, -r, fract(b * 0.5) != 0.0);
}
`;

/** Reads element e of `buf` as raw bits (1-, 2- or 4-byte elements packed into u32 words). */
function loadBitsFn(name: string, buf: string, dtype: DType): string {
  switch (itemSize(dtype)) {
    case 4:
      return `fn ${name}(e: u32) -> u32 { return ${buf}[e]; }\n`;
    case 2:
      return `fn ${name}(e: u32) -> u32 { return (${buf}[e >> 1u] >> ((e & 1u) * 16u)) & 0xffffu; }\n`;
    default:
      return `fn ${name}(e: u32) -> u32 { return (${buf}[e >> 2u] >> ((e & 3u) * 8u)) & 0xffu; }\n`;
  }
}

/** The f32 value of an element's bits. */
function decodeExpr(dtype: DType, bits: string): string {
  switch (dtype) {
    case 'float32':
      return `bitcast<f32>(${bits})`;
    case 'bfloat16':
      return `bf16_to_f32(${bits})`;
    case 'float16':
      return `f16_to_f32(${bits})`;
    case 'int32':
      return `f32(bitcast<i32>(${bits}))`;
    default:
      return `f32(${bits})`;
  }
}

/** The bits an f32 value is stored as. */
function encodeExpr(dtype: DType, v: string): string {
  switch (dtype) {
    case 'float32':
      return `bitcast<u32>(${v})`;
    case 'bfloat16':
      return `f32_to_bf16(${v})`;
    case 'float16':
      return `f32_to_f16(${v})`;
    case 'int32':
      return `bitcast<u32>(f32_to_i32(${v}))`;
    case 'uint32':
      return `f32_to_u32(${v})`;
    case 'uint8':
      return `min(f32_to_u32(${v}), 255u)`;
    case 'bool':
      return `select(0u, 1u, ${v} != 0.0)`;
  }
}

/**
 * The output binding and its bit-store function. Elements narrower than a word share words with their
 * neighbours, which other invocations write at the same time: those merge their bits with atomics.
 */
function outputDecl(binding: number, dtype: DType): string {
  const size = itemSize(dtype);
  if (size === 4) {
    return `@group(0) @binding(${binding}) var<storage, read_write> out: array<u32>;
fn store_bits(e: u32, bits: u32) { out[e] = bits; }
`;
  }
  const [perWord, mask] = size === 2 ? ['1u', '0xffffu'] : ['2u', '0xffu'];
  const lane = size === 2 ? '(e & 1u) * 16u' : '(e & 3u) * 8u';
  return `@group(0) @binding(${binding}) var<storage, read_write> out: array<atomic<u32>>;
fn store_bits(e: u32, bits: u32) {
  let w = e >> ${perWord};
  let sh = ${lane};
  atomicAnd(&out[w], ~(${mask} << sh));
  atomicOr(&out[w], bits << sh);
}
`;
}

// ---------------------------------------------------------------------------------------------------------
// Kernel: elementwise over up to 6 (coalesced) dims, any strides, 1-3 inputs.

/**
 * The coordinate arithmetic of the elementwise kernel, unrolled for the `ndim` innermost of the MAX_DIMS
 * dims (the rest are 1). Integer division is slow on GPUs: a shader per ndim skips the padding dims, and
 * the outermost dim needs no division at all, so a contiguous tensor (one dim once coalesced) needs none.
 */
function indexSteps(ndim: number, tensors: string[], tensorBase: (t: number) => number): string {
  const steps: string[] = [];
  for (let d = MAX_DIMS - 1; d >= MAX_DIMS - ndim; d--) {
    const split = d === MAX_DIMS - ndim ? 'let c = i32(rest);' : `let c = i32(rest % u32(p(${1 + d}u))); rest = rest / u32(p(${1 + d}u));`;
    steps.push(`{ ${split} ${tensors.map((e, t) => `${e} += c * p(${tensorBase(t) + 1 + d}u);`).join(' ')} }`);
  }
  return steps.join('\n  ');
}

/**
 * Params: [n, shape[6], then for out and each input: offset, strides[6]]. With `raw` the one input's bits
 * are copied unchanged (a same-dtype copy of any dtype); otherwise each input is loaded as f32 (v0, v1, v2),
 * `expr` computes the value and it is converted to the output dtype.
 */
function elementwiseShader(inputs: DType[], out: DType, expr: string, raw: boolean, wg: number, ndim: number): string {
  const tensorBase = (t: number) => 1 + MAX_DIMS + t * (1 + MAX_DIMS);
  const nParams = tensorBase(inputs.length + 1);
  let src = paramsDecl(nParams) + WGSL_HELPERS;
  inputs.forEach((dtype, k) => {
    src += `@group(0) @binding(${k + 1}) var<storage, read> x${k}: array<u32>;\n`;
    src += loadBitsFn(`load_bits${k}`, `x${k}`, dtype);
  });
  src += outputDecl(inputs.length + 1, out);
  const tensors = ['eo', ...inputs.map((_, k) => `e${k}`)];
  const value = raw ? 'load_bits0(u32(e0))' : encodeExpr(out, expr);
  return `${src}
@compute @workgroup_size(${wg})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  // More than 65535 workgroups do not fit in x: the grid is 2-D, flattened here.
  let i = (wid.y * nwg.x + wid.x) * ${wg}u + lid;
  if (i >= u32(p(0u))) { return; }
  // Split the flat index into coordinates, innermost dim first, and walk every tensor's strides.
  ${tensors.map((e, t) => `var ${e} = p(${tensorBase(t)}u);`).join(' ')}
  var rest = i;
  ${indexSteps(ndim, tensors, tensorBase)}
  ${raw ? '' : inputs.map((dtype, k) => `let v${k} = ${decodeExpr(dtype, `load_bits${k}(u32(e${k}))`)};`).join('\n  ')}
  store_bits(u32(eo), ${value});
}
`;
}

const UNARY_EXPR: Record<UnaryOp, string> = {
  copy: 'v0',
  neg: '-v0',
  exp: 'exp(v0)',
  log: 'log(v0)',
  sqrt: 'sqrt(v0)',
  rsqrt: 'inverseSqrt(v0)',
  sigmoid: 'sigmoid_f(v0)',
  silu: '(v0 * sigmoid_f(v0))',
  abs: 'abs(v0)',
  tanh: 'tanh(clamp(v0, -15.0, 15.0))', // tanh(15) is 1 in f32; some drivers overflow beyond
  cos: 'cos(reduce_angle(v0))',
  sin: 'sin(reduce_angle(v0))',
};

const BINARY_EXPR: Record<BinaryOp, string> = {
  add: '(v0 + v1)',
  sub: '(v0 - v1)',
  mul: '(v0 * v1)',
  div: '(v0 / v1)',
  maximum: 'max(v0, v1)',
  minimum: 'min(v0, v1)',
  pow: 'pow_f(v0, v1)',
  equal: 'select(0.0, 1.0, v0 == v1)',
  less: 'select(0.0, 1.0, v0 < v1)',
  greater: 'select(0.0, 1.0, v0 > v1)',
};

// ---------------------------------------------------------------------------------------------------------
// Kernel: tiled matmul

interface MatmulTile {
  /** Threads per workgroup in x (columns) and y (rows). */
  wx: number;
  wy: number;
  /** Outputs per thread: a tm x tn block, so each loaded value is reused tm or tn times from registers. */
  tm: number;
  tn: number;
  /** Depth of the K slice staged in workgroup memory per step. */
  bk: number;
}

/**
 * Params: [M, N, K, 0, batchShape[4], a: offset, batchStrides[4], sM, sK, b: offset, batchStrides[4], sK, sN,
 * out: offset, batchStrides[4], sM, sN]. Workgroup (x, y, z) computes the BM x BN tile at (y, x) of batch z.
 */
const MM = { M: 0, N: 1, K: 2, BATCH: 4, A: 8, B: 15, O: 22, COUNT: 29 };

function matmulShader(a: DType, b: DType, t: MatmulTile): string {
  const bm = t.wy * t.tm;
  const bn = t.wx * t.tn;
  const threads = t.wx * t.wy;
  return `${paramsDecl(MM.COUNT)}${WGSL_HELPERS}
@group(0) @binding(1) var<storage, read> xa: array<u32>;
@group(0) @binding(2) var<storage, read> xb: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
${loadBitsFn('load_bits_a', 'xa', a)}${loadBitsFn('load_bits_b', 'xb', b)}
fn load_a(e: i32) -> f32 { return ${decodeExpr(a, 'load_bits_a(u32(e))')}; }
fn load_b(e: i32) -> f32 { return ${decodeExpr(b, 'load_bits_b(u32(e))')}; }

const BM = ${bm}u;
const BN = ${bn}u;
const BK = ${t.bk}u;
// The K slices of the A and B tiles, k-major, so the inner loop reads a row of each.
var<workgroup> tile_a: array<f32, ${bm * t.bk}>;
var<workgroup> tile_b: array<f32, ${bn * t.bk}>;

@compute @workgroup_size(${t.wx}, ${t.wy})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
  let M = u32(p(${MM.M}u));
  let N = u32(p(${MM.N}u));
  let K = u32(p(${MM.K}u));
  // This workgroup's batch: split wid.z over the batch dims (stride 0 where a or b is broadcast).
  var base_a = p(${MM.A}u);
  var base_b = p(${MM.B}u);
  var base_o = p(${MM.O}u);
  var rest = wid.z;
  for (var k = 0u; k < 4u; k++) {
    let d = 3u - k;
    let size = u32(p(${MM.BATCH}u + d));
    let c = i32(rest % size);
    rest = rest / size;
    base_a += c * p(${MM.A + 1}u + d);
    base_b += c * p(${MM.B + 1}u + d);
    base_o += c * p(${MM.O + 1}u + d);
  }
  let a_sm = p(${MM.A + 5}u);
  let a_sk = p(${MM.A + 6}u);
  let b_sk = p(${MM.B + 5}u);
  let b_sn = p(${MM.B + 6}u);
  let row0 = wid.y * BM;
  let col0 = wid.x * BN;

  var acc: array<array<f32, ${t.tn}>, ${t.tm}>;
  for (var k0 = 0u; k0 < K; k0 += BK) {
    // Stage the tiles. Out-of-range elements are zeros, so edge tiles need no case of their own below.
    // Consecutive threads take consecutive k of A and n of B: coalesced for row-major operands.
    for (var i = li; i < BM * BK; i += ${threads}u) {
      let r = i / BK;
      let kk = i % BK;
      var v = 0.0;
      if (row0 + r < M && k0 + kk < K) { v = load_a(base_a + i32(row0 + r) * a_sm + i32(k0 + kk) * a_sk); }
      tile_a[kk * BM + r] = v;
    }
    for (var i = li; i < BN * BK; i += ${threads}u) {
      let c = i % BN;
      let kk = i / BN;
      var v = 0.0;
      if (col0 + c < N && k0 + kk < K) { v = load_b(base_b + i32(k0 + kk) * b_sk + i32(col0 + c) * b_sn); }
      tile_b[kk * BN + c] = v;
    }
    workgroupBarrier();
    // Thread (x, y) owns rows y, y + WY, ... and columns x, x + WX, ...: neighbouring threads read
    // neighbouring words of workgroup memory, and write neighbouring outputs.
    for (var kk = 0u; kk < BK; kk++) {
      var av: array<f32, ${t.tm}>;
      var bv: array<f32, ${t.tn}>;
      for (var r = 0u; r < ${t.tm}u; r++) { av[r] = tile_a[kk * BM + lid.y + r * ${t.wy}u]; }
      for (var c = 0u; c < ${t.tn}u; c++) { bv[c] = tile_b[kk * BN + lid.x + c * ${t.wx}u]; }
      for (var r = 0u; r < ${t.tm}u; r++) {
        for (var c = 0u; c < ${t.tn}u; c++) { acc[r][c] = fma(av[r], bv[c], acc[r][c]); }
      }
    }
    workgroupBarrier();
  }

  let o_sm = p(${MM.O + 5}u);
  let o_sn = p(${MM.O + 6}u);
  for (var r = 0u; r < ${t.tm}u; r++) {
    let row = row0 + lid.y + r * ${t.wy}u;
    for (var c = 0u; c < ${t.tn}u; c++) {
      let col = col0 + lid.x + c * ${t.wx}u;
      if (row < M && col < N) { out[u32(base_o + i32(row) * o_sm + i32(col) * o_sn)] = acc[r][c]; }
    }
  }
}
`;
}

// ---------------------------------------------------------------------------------------------------------
// Shape helpers

/**
 * Merges adjacent dims that every tensor walks as one (outer stride = inner stride * inner size) and drops
 * size-1 dims: fewer dims make cheaper index math, and most views then fit in MAX_DIMS.
 */
function coalesce(shape: readonly number[], strides: (readonly number[])[]): { shape: number[]; strides: number[][] } {
  const outShape: number[] = [];
  const outStrides: number[][] = strides.map(() => []);
  for (let d = 0; d < shape.length; d++) {
    if (shape[d] === 1) continue;
    const last = outShape.length - 1;
    if (last >= 0 && strides.every((s, t) => outStrides[t][last] === s[d] * shape[d])) {
      outShape[last] *= shape[d];
      strides.forEach((s, t) => (outStrides[t][last] = s[d]));
    } else {
      outShape.push(shape[d]);
      strides.forEach((s, t) => outStrides[t].push(s[d]));
    }
  }
  return { shape: outShape, strides: outStrides };
}

/** Left-pads a shape with 1s (and strides with 0s) to exactly `dims` entries. */
function padLeft(values: number[], dims: number, fill: number): number[] {
  return [...new Array<number>(dims - values.length).fill(fill), ...values];
}

function isContiguous(v: View): boolean {
  let expected = 1;
  for (let i = v.shape.length - 1; i >= 0; i--) {
    if (v.shape[i] !== 1 && v.strides[i] !== expected) return false;
    expected *= v.shape[i];
  }
  return true;
}

const describe = (v: View) => `${v.dtype}[${v.shape.join(', ')}]`;
const roundUp4 = (n: number) => Math.ceil(n / 4) * 4;
/** int32 and uint32 would lose precision in the f32 arithmetic of the elementwise kernels. */
const isWideInt = (dtype: DType) => dtype === 'int32' || dtype === 'uint32';

// ---------------------------------------------------------------------------------------------------------
// The backend

export class WebGPUBackend implements Backend {
  readonly name = 'webgpu';
  readonly device: GPUDevice;
  /** The adapter and the Dawn backend it came from, for logs. */
  readonly adapterName: string;

  private readonly ownsDevice: boolean;
  private readonly onDestroy?: () => void;
  private readonly limits: GPUSupportedLimits;
  private readonly workgroupSize: number;
  private readonly matmulTile: MatmulTile;
  private readonly pipelines = new Map<string, GPUComputePipeline>();
  private readonly paramBuffers = new Map<string, GPUBuffer>();
  private encoder: GPUCommandEncoder | null = null;
  private pass: GPUComputePassEncoder | null = null;
  private pendingDispatches = 0;
  /** Buffers released while recorded commands still use them: destroyed after the next submit. */
  private destroyAfterSubmit: GPUBuffer[] = [];
  private firstError: string | null = null;
  private destroyed = false;

  constructor(device: GPUDevice, options: WebGPUBackendOptions = {}) {
    this.device = device;
    this.ownsDevice = options.ownsDevice ?? false;
    this.onDestroy = options.onDestroy;
    this.adapterName = options.adapterName ?? 'unknown adapter';
    this.limits = device.limits;
    const invocations = Math.min(options.maxInvocations ?? Infinity, this.limits.maxComputeInvocationsPerWorkgroup);
    this.workgroupSize = Math.min(256, invocations, this.limits.maxComputeWorkgroupSizeX);
    // 16x16 threads of 4x4 outputs (64x64 tiles) where the device allows 256 invocations; 8x8 (32x32 tiles)
    // otherwise, e.g. the 128-invocation default of the compatibility (GLES) feature level.
    const wide = invocations >= 256 && this.limits.maxComputeWorkgroupSizeY >= 16;
    this.matmulTile = wide ? { wx: 16, wy: 16, tm: 4, tn: 4, bk: 16 } : { wx: 8, wy: 8, tm: 4, tn: 4, bk: 16 };
    // Validation errors arrive asynchronously; keep the first and throw it from the next read().
    device.addEventListener('uncapturederror', (event) => {
      this.firstError ??= (event as GPUUncapturedErrorEvent).error.message;
    });
    device.lost.then((info) => {
      if (!this.destroyed) this.firstError ??= `device lost: ${info.message}`;
    });
  }

  /** Submits the recorded kernels now (read() does it itself). */
  flush(): void {
    if (!this.encoder) return;
    this.pass!.end();
    this.device.queue.submit([this.encoder.finish()]);
    this.encoder = null;
    this.pass = null;
    this.pendingDispatches = 0;
    for (const buffer of this.destroyAfterSubmit) buffer.destroy();
    this.destroyAfterSubmit = [];
  }

  /** Frees the device (when this backend created it) and everything on it; the backend is unusable after. */
  destroy(): void {
    if (this.destroyed) return;
    this.flush();
    for (const buffer of this.paramBuffers.values()) buffer.destroy();
    this.paramBuffers.clear();
    this.pipelines.clear();
    this.destroyed = true;
    if (this.ownsDevice) this.device.destroy();
    this.onDestroy?.();
  }

  // ---- memory

  allocate(dtype: DType, size: number): GpuStorage {
    return new GpuStorage(this, this.createBuffer('allocate', size * itemSize(dtype)), size * itemSize(dtype));
  }

  upload(data: StorageArray): GpuStorage {
    const buffer = this.createBuffer('upload', data.byteLength);
    const bytes = new Uint8Array(data.buffer as ArrayBuffer, data.byteOffset, data.byteLength);
    // writeBuffer takes whole words: copy the tail into a padded word when the length is not a multiple of 4.
    const whole = data.byteLength & ~3;
    if (whole > 0) this.device.queue.writeBuffer(buffer, 0, bytes, 0, whole);
    if (whole < data.byteLength) {
      const tail = new Uint8Array(4);
      tail.set(bytes.subarray(whole));
      this.device.queue.writeBuffer(buffer, whole, tail);
    }
    return new GpuStorage(this, buffer, data.byteLength);
  }

  release(storage: Storage): void {
    const s = storage as GpuStorage;
    if (s.released) return;
    s.released = true;
    if (this.destroyed) return;
    this.destroyLater(s.buffer);
  }

  async read(x: Tensor): Promise<StorageArray> {
    const v = this.view('read', x);
    const size = itemSize(v.dtype);
    const n = sizeOf(v.shape);
    if (n === 0) return storageView(v.dtype, new ArrayBuffer(0));

    // A strided view is gathered into a contiguous temporary first.
    let src = v;
    let temp: GPUBuffer | null = null;
    if (!isContiguous(v)) {
      temp = this.createBuffer('read', n * size);
      src = { buffer: temp, dtype: v.dtype, shape: v.shape, strides: contiguousStrides(v.shape), offset: 0 };
      this.copy(v, src);
    }
    // copyBufferToBuffer takes 4-byte aligned offsets and sizes: copy the enclosing words, slice after.
    const start = src.offset * size;
    const end = start + n * size;
    const alignedStart = start & ~3;
    const alignedEnd = roundUp4(end);
    const staging = this.device.createBuffer({ size: alignedEnd - alignedStart, usage: USAGE.MAP_READ | USAGE.COPY_DST });
    this.flush();
    const encoder = this.device.createCommandEncoder();
    encoder.copyBufferToBuffer(src.buffer, alignedStart, staging, 0, alignedEnd - alignedStart);
    this.device.queue.submit([encoder.finish()]);
    temp?.destroy();
    try {
      await staging.mapAsync(MAP_MODE_READ);
      const bytes = staging.getMappedRange().slice(start - alignedStart, end - alignedStart);
      staging.unmap();
      this.throwDeviceError('read');
      return storageView(v.dtype, bytes);
    } finally {
      staging.destroy();
    }
  }

  // ---- kernels

  unary(op: UnaryOp, x: Tensor, out: Tensor): void {
    const vx = this.view(op, x);
    const vo = this.view(op, out);
    if (op === 'copy') return this.copy(vx, vo);
    if (isWideInt(vx.dtype)) throw unsupported(this.name, `${op} on ${vx.dtype}`);
    this.elementwise(op, [vx], vo, UNARY_EXPR[op], false);
  }

  binary(op: BinaryOp, a: Tensor, b: Tensor, out: Tensor): void {
    const va = this.view(op, a);
    const vb = this.view(op, b);
    const vo = this.view(op, out);
    if (isWideInt(va.dtype) || isWideInt(vb.dtype)) throw unsupported(this.name, `${op} on ${va.dtype} and ${vb.dtype}`);
    this.elementwise(op, [va, vb], vo, BINARY_EXPR[op], false);
  }

  where(cond: Tensor, a: Tensor, b: Tensor, out: Tensor): void {
    const [vc, va, vb] = [cond, a, b].map((t) => this.view('where', t));
    const vo = this.view('where', out);
    if ([vc, va, vb].some((v) => isWideInt(v.dtype))) {
      throw unsupported(this.name, `where on ${vc.dtype}, ${va.dtype} and ${vb.dtype}`);
    }
    this.elementwise('where', [vc, va, vb], vo, 'select(v2, v1, v0 != 0.0)', false);
  }

  matmul(a: Tensor, b: Tensor, out: Tensor): void {
    const [va, vb, vo] = [a, b, out].map((t) => this.view('matmul', t));
    if (!isFloating(va.dtype) || !isFloating(vb.dtype) || vo.dtype !== 'float32') {
      throw unsupported(this.name, `matmul of ${va.dtype} and ${vb.dtype} into ${vo.dtype}`);
    }
    const nd = vo.shape.length;
    const [M, N] = [vo.shape[nd - 2], vo.shape[nd - 1]];
    const K = va.shape[va.shape.length - 1];
    // Batch dims: a and b are aligned to the right of out's (missing ones broadcast), then coalesced.
    const batchShape = vo.shape.slice(0, nd - 2);
    const batchStrides = (v: View) => padLeft(v.strides.slice(0, v.strides.length - 2), batchShape.length, 0);
    const batch = coalesce(batchShape, [va, vb, vo].map(batchStrides));
    if (batch.shape.length > 4) throw new Error(`matmul: ${describe(vo)} has more than 4 batch dims the webgpu kernel can walk`);
    const nBatch = sizeOf(batch.shape);
    if (M * N * nBatch === 0) return;
    if (K === 0) throw unsupported(this.name, 'matmul with K = 0');

    const t = this.matmulTile;
    const grid = [Math.ceil(N / (t.wx * t.tn)), Math.ceil(M / (t.wy * t.tm)), nBatch];
    if (grid.some((g) => g > this.limits.maxComputeWorkgroupsPerDimension)) {
      throw new Error(`matmul: ${describe(va)} @ ${describe(vb)} needs more workgroups than this device allows (${grid})`);
    }
    const matrixStrides = (v: View) => v.strides.slice(v.strides.length - 2);
    const params = [
      M, N, K, 0,
      ...padLeft(batch.shape, 4, 1),
      va.offset, ...padLeft(batch.strides[0], 4, 0), ...matrixStrides(va),
      vb.offset, ...padLeft(batch.strides[1], 4, 0), ...matrixStrides(vb),
      vo.offset, ...padLeft(batch.strides[2], 4, 0), ...matrixStrides(vo),
    ];
    const key = `matmul|${va.dtype}|${vb.dtype}|${t.wx}x${t.wy}`;
    const pipeline = this.pipeline(key, () => matmulShader(va.dtype, vb.dtype, t));
    this.dispatch('matmul', pipeline, params, [va.buffer, vb.buffer], vo.buffer, grid);
  }

  reduce(op: ReduceOp, _x: Tensor, _out: Tensor): void {
    throw unsupported(this.name, op);
  }
  softmax(_x: Tensor, _out: Tensor): void {
    throw unsupported(this.name, 'softmax');
  }
  cumsum(_x: Tensor, _out: Tensor): void {
    throw unsupported(this.name, 'cumsum');
  }
  argsort(_x: Tensor, _out: Tensor, _descending: boolean): void {
    throw unsupported(this.name, 'argsort');
  }
  take(_table: Tensor, _indices: Tensor, _out: Tensor): void {
    throw unsupported(this.name, 'take');
  }
  rmsNorm(_x: Tensor, _weight: Tensor, _eps: number, _out: Tensor): void {
    throw unsupported(this.name, 'rmsNorm');
  }
  rope(_x: Tensor, _cos: Tensor, _sin: Tensor, _positions: Tensor, _traditional: boolean, _out: Tensor): void {
    throw unsupported(this.name, 'rope');
  }

  // ---- internals

  /** A same-dtype copy moves bits (any dtype); a conversion goes through f32. */
  private copy(x: View, out: View): void {
    if (x.dtype === out.dtype) return this.elementwise('copy', [x], out, 'v0', true);
    const integer = (d: DType) => !isFloating(d) && d !== 'bool';
    if (isWideInt(x.dtype) && integer(out.dtype)) throw unsupported(this.name, `copy from ${x.dtype} to ${out.dtype}`);
    this.elementwise('copy', [x], out, 'v0', false);
  }

  private elementwise(op: string, inputs: View[], out: View, expr: string, raw: boolean): void {
    const n = sizeOf(out.shape);
    if (n === 0) return;
    const dims = coalesce(out.shape, [out, ...inputs].map((v) => v.strides));
    if (dims.shape.length > MAX_DIMS) {
      throw new Error(`${op}: ${describe(out)} has more than ${MAX_DIMS} dims the webgpu kernels can walk after merging`);
    }
    const params = [n, ...padLeft(dims.shape, MAX_DIMS, 1)];
    [out, ...inputs].forEach((v, t) => params.push(v.offset, ...padLeft(dims.strides[t], MAX_DIMS, 0)));

    const wg = this.workgroupSize;
    const ndim = dims.shape.length;
    const key = `ew|${inputs.map((v) => v.dtype).join(',')}|${out.dtype}|${raw}|${expr}|${wg}|${ndim}`;
    const pipeline = this.pipeline(key, () => elementwiseShader(inputs.map((v) => v.dtype), out.dtype, expr, raw, wg, ndim));
    const groups = Math.ceil(n / wg);
    const x = Math.min(groups, this.limits.maxComputeWorkgroupsPerDimension);
    this.dispatch(op, pipeline, params, inputs.map((v) => v.buffer), out.buffer, [x, Math.ceil(groups / x), 1]);
  }

  /** Records one dispatch: params at binding 0, inputs at 1.., the output last. */
  private dispatch(op: string, pipeline: GPUComputePipeline, params: number[], inputs: GPUBuffer[], out: GPUBuffer, grid: number[]): void {
    if (inputs.includes(out)) throw new Error(`${op}: the output shares storage with an input, which webgpu kernels cannot write`);
    for (const buffer of [...inputs, out]) {
      if (buffer.size > this.limits.maxStorageBufferBindingSize) {
        throw new Error(`${op}: a buffer of ${buffer.size} bytes exceeds this device's maxStorageBufferBindingSize (${this.limits.maxStorageBufferBindingSize})`);
      }
    }
    if (grid[1] > this.limits.maxComputeWorkgroupsPerDimension) throw new Error(`${op}: too many elements for one dispatch`);
    const entries: GPUBindGroupEntry[] = [{ binding: 0, resource: { buffer: this.paramBuffer(params) } }];
    [...inputs, out].forEach((buffer, i) => entries.push({ binding: i + 1, resource: { buffer } }));
    const bindGroup = this.device.createBindGroup({ layout: pipeline.getBindGroupLayout(0), entries });
    if (!this.encoder) {
      this.encoder = this.device.createCommandEncoder();
      this.pass = this.encoder.beginComputePass();
    }
    // Dispatches within one pass see each other's writes: WebGPU orders them like separate submits.
    this.pass!.setPipeline(pipeline);
    this.pass!.setBindGroup(0, bindGroup);
    this.pass!.dispatchWorkgroups(grid[0], grid[1], grid[2]);
    if (++this.pendingDispatches >= MAX_PENDING) this.flush();
  }

  private pipeline(key: string, source: () => string): GPUComputePipeline {
    let pipeline = this.pipelines.get(key);
    if (!pipeline) {
      const module = this.device.createShaderModule({ label: key, code: source() });
      pipeline = this.device.createComputePipeline({ label: key, layout: 'auto', compute: { module, entryPoint: 'main' } });
      this.pipelines.set(key, pipeline);
    }
    return pipeline;
  }

  /** A uniform buffer holding `params`, shared by every dispatch with the same values. */
  private paramBuffer(params: number[]): GPUBuffer {
    const key = params.join(',');
    let buffer = this.paramBuffers.get(key);
    if (buffer) {
      // Re-insert, so that the Map's order is least recently used first.
      this.paramBuffers.delete(key);
      this.paramBuffers.set(key, buffer);
      return buffer;
    }
    const values = new Int32Array(Math.max(4, roundUp4(params.length)));
    values.set(params);
    buffer = this.device.createBuffer({ size: values.byteLength, usage: USAGE.UNIFORM, mappedAtCreation: true });
    new Int32Array(buffer.getMappedRange()).set(values);
    buffer.unmap();
    this.paramBuffers.set(key, buffer);
    if (this.paramBuffers.size > MAX_PARAM_BUFFERS) {
      const [oldestKey, oldest] = this.paramBuffers.entries().next().value!;
      this.paramBuffers.delete(oldestKey);
      this.destroyLater(oldest);
    }
    return buffer;
  }

  /** A storage buffer of at least `byteLength` bytes, rounded up to whole words (shaders read u32s). */
  private createBuffer(op: string, byteLength: number): GPUBuffer {
    this.assertAlive(op);
    const size = Math.max(4, roundUp4(byteLength));
    if (size > this.limits.maxBufferSize) {
      throw new RangeError(`${op}: ${byteLength} bytes exceed this device's maxBufferSize (${this.limits.maxBufferSize})`);
    }
    return this.device.createBuffer({ size, usage: USAGE.STORAGE | USAGE.COPY_SRC | USAGE.COPY_DST });
  }

  private destroyLater(buffer: GPUBuffer): void {
    if (this.encoder) this.destroyAfterSubmit.push(buffer);
    else buffer.destroy();
  }

  private view(op: string, t: Tensor): View {
    this.assertAlive(op);
    t.assertLive(op);
    const s = t.storage;
    if (!(s instanceof GpuStorage)) {
      throw new Error(`${op}: the tensor ${t.describe()} lives on the ${t.backend.name} backend, not webgpu`);
    }
    return { buffer: s.buffer, dtype: t.dtype, shape: t.shape, strides: t.strides, offset: t.offset };
  }

  private assertAlive(op: string): void {
    if (this.destroyed) throw new Error(`${op}: the webgpu backend has been destroyed`);
  }

  private throwDeviceError(op: string): void {
    if (this.firstError === null) return;
    const message = this.firstError;
    this.firstError = null;
    throw new Error(`${op}: a webgpu kernel failed: ${message}`);
  }
}
