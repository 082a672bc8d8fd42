// WGSL kernels: the text of a kernel and what the runtime reads from it. Nothing about a kernel's interface is
// written twice: its bindings, its `struct Params` (the uniform block of scalar arguments) and its named
// constants are parsed from the WGSL, so the TypeScript side fills params by field name and binds buffers by
// binding name.
//
// Tensor-core's own kernels (kernels/*.wgsl) are read once from disk and prefixed with the shared libraries
// (kernels/dtype.wgsl, kernels/layout.wgsl). A kernel's variants differ in their `override` constants and in
// the dtypes of its "typed" bindings, for which the runtime appends accessor functions (see accessors below).
import { readFileSync } from 'node:fs';
import { itemSize, type DType } from '../../dtype.ts';

export type BindingKind = 'uniform' | 'read-only-storage' | 'storage';

export interface BindingInfo {
  name: string;
  binding: number;
  kind: BindingKind;
  /** The declared WGSL type, e.g. `array<u32>` or `array<atomic<u32>>`. */
  type: string;
}

/**
 * A field of `struct Params`, or of a struct inside it (named by its path, "rows.n"): its byte offset in the
 * uniform block, scalar type and number of scalars.
 */
interface ParamField {
  name: string;
  offset: number;
  scalar: 'u32' | 'i32' | 'f32';
  count: number;
}

/** Values of a struct's fields by name: numbers, arrays of them for vectors, objects for inner structs. */
export interface ParamValues {
  [field: string]: number | readonly number[] | ParamValues;
}

/**
 * A WGSL compute kernel (entry point `main`), parsed once: its bindings, its `struct Params` and its
 * module-scope constants. Tensor-core's own kernels are WgslKernels, and other packages make theirs the same
 * way and run them with WebGPUBackend.run (extension.ts).
 */
export class WgslKernel {
  readonly name: string;
  /** The source compiled for every variant: the kernel's own text first (so compiler errors point at its
   * lines), then the libraries. */
  readonly code: string;
  /** Every `@group(0) @binding(n) var...` of the kernel, by name. */
  readonly bindings: ReadonlyMap<string, BindingInfo>;
  /** The name of the uniform binding of type Params, if the kernel has one. */
  readonly paramsBinding: string | null;
  /** The uniform block's size in bytes (a multiple of 16). */
  readonly paramsSize: number;
  private readonly fields: ReadonlyMap<string, ParamField>;
  private readonly consts: ReadonlyMap<string, number>;

  /**
   * `libraries` (by default the dtype conversions of kernels/dtype.wgsl) are appended to `source`: WGSL
   * declarations may come in any order. Only `source` is parsed for bindings, params and constants.
   */
  constructor(name: string, source: string, libraries = dtypeLibrary()) {
    this.name = name;
    this.code = `${source}\n${libraries}`;
    const stripped = stripComments(source);
    this.bindings = parseBindings(name, stripped);
    const uniform = [...this.bindings.values()].find((b) => b.kind === 'uniform');
    this.paramsBinding = uniform?.name ?? null;
    if (uniform && uniform.type !== 'Params') {
      throw new Error(`${name}: the uniform binding ${uniform.name} must have type Params, got ${uniform.type}`);
    }
    // Params may hold structs the libraries declare (layout.wgsl's Rows).
    const layout = uniform ? structLayout(name, 'Params', parseStructs(stripComments(this.code))) : null;
    this.fields = new Map(layout?.fields.map((f) => [f.name, f]));
    this.paramsSize = layout ? layout.size : 0;
    this.consts = parseConstants(stripped);
  }

  /** The value of a module-scope `const NAME = <integer>;` (how kernels number their ops). */
  constant(name: string): number {
    const value = this.consts.get(name);
    if (value === undefined) throw new Error(`${this.name}: no module-scope constant ${name}`);
    return value;
  }

  /** The uniform block for these values: every field of Params, by name, and nothing else. */
  packParams(values: ParamValues): ArrayBuffer {
    const bytes = new ArrayBuffer(Math.max(this.paramsSize, 16));
    const view = new DataView(bytes);
    const given = flattenParams(values);
    for (const key of given.keys()) {
      if (!this.fields.has(key)) throw new Error(`${this.name}: Params has no field ${key}`);
    }
    for (const field of this.fields.values()) {
      const value = given.get(field.name);
      if (value === undefined) throw new Error(`${this.name}: missing params.${field.name}`);
      const list = typeof value === 'number' ? [value] : value;
      if (list.length > field.count) {
        throw new Error(`${this.name}: params.${field.name} takes ${field.count} values, got ${list.length}`);
      }
      list.forEach((v, i) => writeScalar(view, field.offset + 4 * i, field, v, this.name));
    }
    return bytes;
  }
}

/** Values of inner structs under dotted paths ("rows.n"), as the fields are named. */
function flattenParams(values: ParamValues, prefix = '', into = new Map<string, number | readonly number[]>()) {
  for (const [key, value] of Object.entries(values)) {
    if (typeof value === 'number' || Array.isArray(value)) into.set(prefix + key, value as number | readonly number[]);
    else flattenParams(value as ParamValues, `${prefix}${key}.`, into);
  }
  return into;
}

function writeScalar(view: DataView, at: number, field: ParamField, v: number, kernel: string): void {
  if (field.scalar === 'f32') {
    view.setFloat32(at, v, true);
    return;
  }
  const [lo, hi] = field.scalar === 'u32' ? [0, 2 ** 32 - 1] : [-(2 ** 31), 2 ** 31 - 1];
  if (!Number.isInteger(v) || v < lo || v > hi) {
    throw new RangeError(`${kernel}: params.${field.name} must be a ${field.scalar}, got ${v}`);
  }
  if (field.scalar === 'u32') view.setUint32(at, v, true);
  else view.setInt32(at, v, true);
}

const BINDING = /@group\(\s*0\s*\)\s*@binding\(\s*(\d+)\s*\)\s*var\s*(?:<([^>]*)>)?\s*(\w+)\s*:\s*([^;]+);/g;

function parseBindings(kernel: string, source: string): Map<string, BindingInfo> {
  const bindings = new Map<string, BindingInfo>();
  for (const [, binding, space = '', name, type] of source.matchAll(BINDING)) {
    const [addressSpace, access = 'read'] = space.split(',').map((s) => s.trim());
    let kind: BindingKind;
    if (addressSpace === 'uniform') kind = 'uniform';
    else if (addressSpace === 'storage') kind = access === 'read_write' ? 'storage' : 'read-only-storage';
    else throw new Error(`${kernel}: binding ${name} must be a uniform or storage buffer, got var<${space}>`);
    bindings.set(name, { name, binding: Number(binding), kind, type: type.replace(/\s+/g, '') });
  }
  if (new Set([...bindings.values()].map((b) => b.binding)).size !== bindings.size) {
    throw new Error(`${kernel}: two bindings share a binding number`);
  }
  return bindings;
}

const stripComments = (code: string) => code.replace(/\/\/[^\n]*/g, '');

/** The bodies of the `struct Name { ... }` declarations of some WGSL, by name. */
function parseStructs(code: string): Map<string, string> {
  return new Map([...code.matchAll(/struct\s+(\w+)\s*\{([^}]*)\}/g)].map(([, name, body]) => [name, body]));
}

/**
 * The byte layout of a struct under WGSL's uniform rules, its inner structs' fields named by their paths.
 * Supported field types: u32, i32, f32, vec2/vec3/vec4 of them, array<vec4<T>, N> (uniform arrays need a
 * 16-byte element stride) and structs of these.
 */
function structLayout(kernel: string, name: string, structs: Map<string, string>): { fields: ParamField[]; size: number } {
  const body = structs.get(name);
  if (body === undefined) throw new Error(`${kernel}: no struct ${name}${name === 'Params' ? ' for the uniform binding' : ''}`);
  const fields: ParamField[] = [];
  let offset = 0;
  for (const decl of splitTopLevel(body)) {
    const m = /^(\w+)\s*:\s*(.+)$/.exec(decl);
    const typeName = m?.[2].replace(/\s+/g, '') ?? '';
    if (m && structs.has(typeName)) {
      // A struct member is aligned (and sized) to 16 bytes in the uniform address space.
      const inner = structLayout(kernel, typeName, structs);
      offset = Math.ceil(offset / 16) * 16;
      for (const f of inner.fields) fields.push({ ...f, name: `${m[1]}.${f.name}`, offset: offset + f.offset });
      offset += inner.size;
      continue;
    }
    const type = m ? parseFieldType(typeName) : null;
    if (!m || !type) throw new Error(`${kernel}: unsupported field "${decl}" in struct ${name}`);
    offset = Math.ceil(offset / type.align) * type.align;
    fields.push({ name: m[1], offset, scalar: type.scalar, count: type.count });
    offset += type.size;
  }
  return { fields, size: Math.ceil(offset / 16) * 16 };
}

/** Splits a struct body at the commas outside <...> (array<vec4<u32>, 2> holds one). */
function splitTopLevel(body: string): string[] {
  const parts: string[] = [];
  let depth = 0;
  let start = 0;
  for (let i = 0; i <= body.length; i++) {
    const c = body[i];
    if (c === '<') depth++;
    else if (c === '>') depth--;
    else if (i === body.length || (c === ',' && depth === 0)) {
      parts.push(body.slice(start, i).trim());
      start = i + 1;
    }
  }
  return parts.filter(Boolean);
}

interface FieldType {
  scalar: 'u32' | 'i32' | 'f32';
  count: number;
  size: number;
  align: number;
}

/** Scalar types by name, and by the suffix of the short vector names (vec4u, vec2f...). */
const SCALARS: Record<string, FieldType['scalar']> = { u32: 'u32', i32: 'i32', f32: 'f32', u: 'u32', i: 'i32', f: 'f32' };

function parseFieldType(type: string): FieldType | null {
  const scalar = (s: string): FieldType['scalar'] | undefined => SCALARS[s];
  if (type.length === 3 && scalar(type)) return { scalar: scalar(type)!, count: 1, size: 4, align: 4 };
  const vec = /^vec([234])(?:<(\w+)>|([uif]))$/.exec(type);
  if (vec) {
    const n = Number(vec[1]);
    const s = scalar(vec[2] ?? vec[3]);
    return s ? { scalar: s, count: n, size: 4 * n, align: n === 2 ? 8 : 16 } : null;
  }
  const arr = /^array<vec4(?:<(\w+)>|([uif])),(\d+)>$/.exec(type);
  if (arr) {
    const s = scalar(arr[1] ?? arr[2]);
    const n = Number(arr[3]);
    return s ? { scalar: s, count: 4 * n, size: 16 * n, align: 16 } : null;
  }
  return null;
}

function parseConstants(source: string): Map<string, number> {
  const consts = new Map<string, number>();
  for (const [, name, value] of source.matchAll(/^const\s+(\w+)\s*(?::\s*\w+\s*)?=\s*(-?\d+)[ui]?\s*;/gm)) {
    consts.set(name, Number(value));
  }
  return consts;
}

// ---------------------------------------------------------------------------------------------------------
// Typed bindings: a kernel declares a tensor as words (array<u32> to read, array<atomic<u32>> to write, since
// neighbouring 8- or 16-bit elements share a word that other invocations write at the same time) and calls
// the accessors the runtime appends for the tensor's dtype, e.g. for a binding `x`:
//   x_bits(e) -> u32    the raw bits of element e          x_load(e) -> f32   its value
//   x_int(e) -> i32     its value as an integer (int32, uint8 and bool tensors)
// and for an output `out`: out_store(e, v: f32), out_store_int(e, v: i32), out_store_bits(e, bits).

const INT_DTYPES: readonly DType[] = ['int32', 'uint8', 'bool'];

export function accessors(kernel: WgslKernel, dtypes: Record<string, DType>): string {
  let code = '';
  for (const [name, dtype] of Object.entries(dtypes)) {
    const binding = kernel.bindings.get(name);
    if (!binding) throw new Error(`${kernel.name}: no binding ${name} to type as ${dtype}`);
    const integer = INT_DTYPES.includes(dtype);
    if (binding.type === 'array<atomic<u32>>') {
      code += storeBits(name, itemSize(dtype));
      code += `fn ${name}_store(e: u32, v: f32) { ${name}_store_bits(e, encode_${dtype}(v)); }\n`;
      code += integer
        ? `fn ${name}_store_int(e: u32, v: i32) { ${name}_store_bits(e, int_encode_${dtype}(v)); }\n`
        : `fn ${name}_store_int(e: u32, v: i32) { ${name}_store(e, f32(v)); }\n`;
    } else if (binding.type === 'array<u32>') {
      code += loadBits(name, itemSize(dtype));
      code += `fn ${name}_load(e: u32) -> f32 { return decode_${dtype}(${name}_bits(e)); }\n`;
      code += integer
        ? `fn ${name}_int(e: u32) -> i32 { return int_decode_${dtype}(${name}_bits(e)); }\n`
        : `fn ${name}_int(e: u32) -> i32 { return f32_to_i32(${name}_load(e)); }\n`;
    } else {
      throw new Error(`${kernel.name}: typed binding ${name} must be array<u32> or array<atomic<u32>>, got ${binding.type}`);
    }
  }
  return code;
}

function loadBits(name: string, size: number): string {
  if (size === 4) return `fn ${name}_bits(e: u32) -> u32 { return ${name}[e]; }\n`;
  if (size === 2) return `fn ${name}_bits(e: u32) -> u32 { return (${name}[e >> 1u] >> ((e & 1u) * 16u)) & 0xffffu; }\n`;
  return `fn ${name}_bits(e: u32) -> u32 { return (${name}[e >> 2u] >> ((e & 3u) * 8u)) & 0xffu; }\n`;
}

function storeBits(name: string, size: number): string {
  if (size === 4) return `fn ${name}_store_bits(e: u32, bits: u32) { atomicStore(&${name}[e], bits); }\n`;
  const [perWord, mask] = size === 2 ? ['1u', '0xffffu'] : ['2u', '0xffu'];
  const lane = size === 2 ? '(e & 1u) * 16u' : '(e & 3u) * 8u';
  return `fn ${name}_store_bits(e: u32, bits: u32) {
  let w = e >> ${perWord};
  let shift = ${lane};
  atomicAnd(&${name}[w], ~(${mask} << shift));
  atomicOr(&${name}[w], bits << shift);
}
`;
}

// ---------------------------------------------------------------------------------------------------------
// Tensor-core's kernels

const KERNELS_DIR = new URL('./kernels/', import.meta.url);
const sources = new Map<string, string>();

function readKernelFile(file: string): string {
  let text = sources.get(file);
  if (text === undefined) {
    text = readFileSync(new URL(file, KERNELS_DIR), 'utf8');
    sources.set(file, text);
  }
  return text;
}

/** The dtype conversions (kernels/dtype.wgsl), which extension kernels may call too. */
export function dtypeLibrary(): string {
  return readKernelFile('dtype.wgsl');
}

const kernels = new Map<string, WgslKernel>();

/** One of tensor-core's kernels (kernels/<name>.wgsl) with the shared libraries, read and parsed once. */
export function kernel(name: string): WgslKernel {
  let k = kernels.get(name);
  if (!k) {
    k = new WgslKernel(name, readKernelFile(`${name}.wgsl`), dtypeLibrary() + readKernelFile('layout.wgsl'));
    kernels.set(name, k);
  }
  return k;
}
