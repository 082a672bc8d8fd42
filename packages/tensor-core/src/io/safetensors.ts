// safetensors files: read (memory-mapped, zero-copy where aligned), write, and sharded checkpoints.
//
// Layout (https://huggingface.co/docs/safetensors): an 8-byte little-endian header length N, N bytes of JSON
// header `{ "__metadata__": {...}, "<name>": { "dtype": "F32", "shape": [..], "data_offsets": [begin, end] } }`,
// then the data; offsets are relative to the first byte after the header.
import { closeSync, existsSync, openSync, readdirSync, readFileSync, renameSync, statSync, unlinkSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { cpu, CpuStorage } from '../backend/cpu.ts';
import { itemSize, storageView, type DType, type StorageArray } from '../dtype.ts';
import { native } from '../native.ts';
import { formatShape, sizeOf } from '../shape.ts';
import { Tensor } from '../tensor.ts';

/** The file's dtype strings and ours. */
const FILE_TO_DTYPE: Record<string, DType> = {
  F32: 'float32',
  F16: 'float16',
  BF16: 'bfloat16',
  I32: 'int32',
  U32: 'uint32',
  U8: 'uint8',
  BOOL: 'bool',
};
const DTYPE_TO_FILE = Object.fromEntries(Object.entries(FILE_TO_DTYPE).map(([k, v]) => [v, k])) as Record<DType, string>;

/** Valid safetensors dtypes that have no tensor-core dtype: named as "unsupported", not "unknown". */
const UNSUPPORTED_FILE_DTYPES = new Set([
  'F64',
  'I64',
  'U64',
  'I16',
  'U16',
  'I8',
  'F8_E4M3',
  'F8_E5M2',
  'F8_E8M0',
  'F6_E2M3',
  'F6_E3M2',
  'F4',
  'C64',
]);

const LENGTH_PREFIX_BYTES = 8;
// The reference implementation's limit; a larger value almost surely means the file is not safetensors.
const MAX_HEADER_BYTES = 100_000_000;

export interface TensorInfo {
  dtype: DType;
  shape: number[];
  /** Bytes of data in the file. */
  byteLength: number;
}

interface Entry extends TensorInfo {
  /** Absolute byte offset of the tensor's data in the file. */
  start: number;
}

// ---- reading ------------------------------------------------------------------------------------------------------

/** An open safetensors file. Tensors are read lazily; `get` returns views into the file mapping. */
export class SafetensorsFile {
  readonly path: string;
  /** The header's `__metadata__` (string to string), or {} when absent. */
  readonly metadata: Record<string, string>;
  /** The file mapping: every zero-copy tensor of this file has it as its storage buffer. */
  readonly buffer: ArrayBuffer;
  private readonly entries: Map<string, Entry>;

  constructor(path: string, buffer: ArrayBuffer) {
    this.path = path;
    this.buffer = buffer;
    const { header, dataStart } = parseHeader(path, buffer);
    this.metadata = parseMetadata(path, header.__metadata__);
    this.entries = new Map();
    const dataLength = buffer.byteLength - dataStart;
    for (const [name, raw] of Object.entries(header)) {
      if (name === '__metadata__') continue;
      this.entries.set(name, parseEntry(path, name, raw, dataStart, dataLength));
    }
  }

  /** Tensor names in header order. */
  get names(): string[] {
    return [...this.entries.keys()];
  }

  has(name: string): boolean {
    return this.entries.has(name);
  }

  /** dtype, shape and size of a tensor, without reading its data. */
  info(name: string): TensorInfo {
    const { dtype, shape, byteLength } = this.entry(name);
    return { dtype, shape: [...shape], byteLength };
  }

  /**
   * The tensor, on the CPU. A view of the mapping when its data starts at a multiple of its item size
   * (typed arrays and the kernels need aligned elements); otherwise a copy in a fresh allocation.
   */
  get(name: string): Tensor {
    const e = this.entry(name);
    if (e.start % itemSize(e.dtype) === 0) {
      return new Tensor(cpu.wrap(this.buffer, e.start, e.byteLength), e.dtype, e.shape);
    }
    const storage = cpu.allocate(e.dtype, sizeOf(e.shape));
    new Uint8Array(storage.buffer, storage.byteOffset, e.byteLength).set(new Uint8Array(this.buffer, e.start, e.byteLength));
    return new Tensor(storage, e.dtype, e.shape);
  }

  private entry(name: string): Entry {
    const e = this.entries.get(name);
    if (!e) throw new Error(`${this.path}: no tensor named "${name}"${suggest(name, this.entries.keys(), this.entries.size)}`);
    return e;
  }
}

/** Maps and parses a safetensors file; the data is not touched until a tensor is used. */
export function readSafetensors(path: string): SafetensorsFile {
  return new SafetensorsFile(path, native.mmapFile(path) as ArrayBuffer);
}

/** Every tensor of a file, by name (views into the mapping where aligned). */
export function loadSafetensors(path: string): Map<string, Tensor> {
  const file = readSafetensors(path);
  return new Map(file.names.map((name) => [name, file.get(name)]));
}

function parseHeader(path: string, buffer: ArrayBuffer): { header: Record<string, unknown>; dataStart: number } {
  const fileSize = buffer.byteLength;
  if (fileSize < LENGTH_PREFIX_BYTES) {
    throw new Error(`${path}: not a safetensors file: ${fileSize} bytes is too short for the 8-byte header length`);
  }
  const headerLength = Number(new DataView(buffer, 0, 8).getBigUint64(0, true));
  if (headerLength > fileSize - LENGTH_PREFIX_BYTES) {
    throw new Error(
      `${path}: header length ${headerLength} runs past the end of the file (${fileSize} bytes): ` +
        'the file is truncated or not safetensors',
    );
  }
  if (headerLength > MAX_HEADER_BYTES) {
    throw new Error(`${path}: header length ${headerLength} exceeds ${MAX_HEADER_BYTES} bytes: not a safetensors file`);
  }
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(new Uint8Array(buffer, LENGTH_PREFIX_BYTES, headerLength));
  } catch {
    throw new Error(`${path}: the header is not valid UTF-8: not a safetensors file`);
  }
  let header: unknown;
  try {
    header = JSON.parse(text);
  } catch (err) {
    throw new Error(`${path}: the header is not valid JSON (${(err as Error).message}): truncated or not safetensors`);
  }
  if (!isPlainObject(header)) {
    throw new Error(`${path}: the header must be a JSON object of tensors, got ${describeJson(header)}`);
  }
  return { header, dataStart: LENGTH_PREFIX_BYTES + headerLength };
}

function parseMetadata(path: string, raw: unknown): Record<string, string> {
  if (raw === undefined || raw === null) return {};
  if (!isPlainObject(raw)) throw new Error(`${path}: __metadata__ must be an object, got ${describeJson(raw)}`);
  // The format says string values; other writers sometimes store numbers. Keep them readable as strings.
  return Object.fromEntries(Object.entries(raw).map(([k, v]) => [k, typeof v === 'string' ? v : JSON.stringify(v)]));
}

function parseEntry(path: string, name: string, raw: unknown, dataStart: number, dataLength: number): Entry {
  const where = `${path}: tensor "${name}"`;
  if (!isPlainObject(raw)) throw new Error(`${where}: expected {dtype, shape, data_offsets}, got ${describeJson(raw)}`);

  const fileDtype = raw.dtype;
  const dtype = typeof fileDtype === 'string' ? FILE_TO_DTYPE[fileDtype] : undefined;
  if (!dtype) {
    const supported = Object.keys(FILE_TO_DTYPE).join(', ');
    if (typeof fileDtype === 'string' && UNSUPPORTED_FILE_DTYPES.has(fileDtype)) {
      throw new Error(`${path}: unsupported dtype ${fileDtype} for tensor "${name}" (supported: ${supported})`);
    }
    throw new Error(`${where}: unknown dtype ${JSON.stringify(fileDtype)} (supported: ${supported})`);
  }

  const shape = raw.shape;
  if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
    throw new Error(`${where}: shape must be a list of non-negative integers, got ${JSON.stringify(shape)}`);
  }

  const offsets = raw.data_offsets;
  if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every((o) => Number.isSafeInteger(o) && o >= 0)) {
    throw new Error(`${where}: data_offsets must be [begin, end] (non-negative integers), got ${JSON.stringify(offsets)}`);
  }
  const [begin, end] = offsets as [number, number];
  if (begin > end || end > dataLength) {
    throw new Error(
      `${where}: data_offsets [${begin}, ${end}] are out of range: the data section holds ${dataLength} bytes ` +
        '(is the file truncated?)',
    );
  }
  const expected = sizeOf(shape) * itemSize(dtype);
  if (end - begin !== expected) {
    throw new Error(
      `${where}: data_offsets [${begin}, ${end}] hold ${end - begin} bytes, but ${fileDtype}${formatShape(shape)} ` + `needs ${expected}`,
    );
  }
  return { dtype, shape, byteLength: expected, start: dataStart + begin };
}

// ---- writing ------------------------------------------------------------------------------------------------------

/**
 * Writes tensors (of any backend with synchronous readback, any strides) and optional string metadata.
 * The header is padded with spaces so the data starts at a multiple of 8, and tensors are laid out widest
 * item first, so every tensor of the written file can be read back without a copy.
 */
export function saveSafetensors(
  path: string,
  tensors: Record<string, Tensor> | Map<string, Tensor>,
  metadata?: Record<string, string>,
): void {
  const list = tensors instanceof Map ? [...tensors.entries()] : Object.entries(tensors);
  for (const [name, t] of list) checkSavable(path, name, t);
  // Stable sort: tensors of one item size keep the caller's order.
  list.sort(([, a], [, b]) => itemSize(b.dtype) - itemSize(a.dtype));

  const header: Record<string, unknown> = {};
  if (metadata) header.__metadata__ = checkMetadata(path, metadata);
  let offset = 0;
  for (const [name, t] of list) {
    const bytes = t.size * itemSize(t.dtype);
    header[name] = { dtype: DTYPE_TO_FILE[t.dtype], shape: [...t.shape], data_offsets: [offset, offset + bytes] };
    offset += bytes;
  }

  // Written beside the target and renamed over it: a crash leaves no half-written file, and a file that is
  // mapped right now (MAP_PRIVATE still shows the file's untouched pages) keeps its old contents.
  const tmp = `${path}.tmp-${process.pid}`;
  const fd = openSync(tmp, 'w');
  try {
    writeAll(fd, encodeHeader(header));
    for (const [, t] of list) writeAll(fd, tensorBytes(t));
    closeSync(fd);
    renameSync(tmp, path);
  } catch (err) {
    try {
      closeSync(fd);
    } catch {
      // already closed
    }
    if (existsSync(tmp)) unlinkSync(tmp);
    throw err;
  }
}

function checkSavable(path: string, name: string, t: unknown): asserts t is Tensor {
  if (name === '__metadata__') throw new Error(`saveSafetensors ${path}: "__metadata__" is reserved, not a tensor name`);
  if (!(t instanceof Tensor)) throw new TypeError(`saveSafetensors ${path}: "${name}" is not a Tensor`);
  t.assertLive(`saveSafetensors ${path}: "${name}"`);
}

function checkMetadata(path: string, metadata: Record<string, string>): Record<string, string> {
  for (const [k, v] of Object.entries(metadata)) {
    if (typeof v !== 'string') {
      throw new TypeError(`saveSafetensors ${path}: metadata "${k}" must be a string (safetensors metadata is string to string)`);
    }
  }
  return metadata;
}

/** 8-byte length + JSON, padded with spaces so that the data starts 8-aligned. */
function encodeHeader(header: Record<string, unknown>): Uint8Array {
  const json = new TextEncoder().encode(JSON.stringify(header));
  const padded = Math.ceil((LENGTH_PREFIX_BYTES + json.length) / 8) * 8 - LENGTH_PREFIX_BYTES;
  const out = new Uint8Array(LENGTH_PREFIX_BYTES + padded).fill(0x20);
  new DataView(out.buffer).setBigUint64(0, BigInt(padded), true);
  out.set(json, LENGTH_PREFIX_BYTES);
  return out;
}

/** The tensor's values, contiguous, in storage form (bf16/f16 as raw 16-bit words). */
function tensorBytes(t: Tensor): Uint8Array {
  const bytes = t.size * itemSize(t.dtype);
  const storage = t.storage;
  if (storage instanceof CpuStorage) {
    if (t.isContiguous) return new Uint8Array(storage.buffer, storage.byteOffset + t.offset * itemSize(t.dtype), bytes);
    return asBytes(gatherStrided(t, storage));
  }
  const read = t.backend.readSync;
  if (!read) {
    throw new Error(
      `saveSafetensors: ${t.describe()} is on the ${t.backend.name} backend, which has no synchronous readback; move it to the CPU first`,
    );
  }
  return asBytes(read.call(t.backend, t));
}

/**
 * Reads a strided CPU view element by element. Done here rather than through the backend's copy kernel, so
 * that saving needs nothing but the storage: it works for every dtype (raw half words included) and any
 * strides (broadcast 0, negative).
 */
function gatherStrided(t: Tensor, storage: CpuStorage): StorageArray {
  const size = itemSize(t.dtype);
  // Typed arrays need an aligned start; user-wrapped memory might not have one, so align it by copying.
  const aligned = storage.byteOffset % size === 0;
  const buffer = aligned ? storage.buffer : storage.buffer.slice(storage.byteOffset, storage.byteOffset + storage.byteLength);
  const base = aligned ? storage.byteOffset : 0;
  const src = storageView(t.dtype, buffer, base, Math.floor(storage.byteLength / size));
  const out = storageView(t.dtype, new ArrayBuffer(t.size * size));
  const { shape, strides } = t;
  const index = new Array<number>(shape.length).fill(0);
  let pos = t.offset;
  for (let i = 0; i < out.length; i++) {
    out[i] = src[pos];
    // Odometer step: bump the last axis, carry into earlier ones.
    for (let d = shape.length - 1; d >= 0; d--) {
      pos += strides[d];
      if (++index[d] < shape[d]) break;
      pos -= strides[d] * shape[d];
      index[d] = 0;
    }
  }
  return out;
}

function asBytes(a: StorageArray): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

/** writeSync may write less than asked, and one call cannot pass 2 GiB; loop in chunks. */
function writeAll(fd: number, data: Uint8Array): void {
  const CHUNK = 1 << 30;
  let done = 0;
  while (done < data.length) {
    done += writeSync(fd, data, done, Math.min(CHUNK, data.length - done));
  }
}

// ---- checkpoints (one file or shards) -----------------------------------------------------------------------------

export const INDEX_FILE = 'model.safetensors.index.json';

/** The weights of a model directory: one safetensors file or several shards, behind one name space. */
export class Checkpoint {
  readonly dir: string;
  /** The index file when the checkpoint is sharded, else null. */
  readonly indexPath: string | null;
  readonly files: SafetensorsFile[];
  private readonly fileOf: Map<string, SafetensorsFile>;

  constructor(dir: string, indexPath: string | null, files: SafetensorsFile[], fileOf: Map<string, SafetensorsFile>) {
    this.dir = dir;
    this.indexPath = indexPath;
    this.files = files;
    this.fileOf = fileOf;
  }

  get names(): string[] {
    return [...this.fileOf.keys()];
  }

  has(name: string): boolean {
    return this.fileOf.has(name);
  }

  info(name: string): TensorInfo {
    return this.file(name).info(name);
  }

  get(name: string): Tensor {
    return this.file(name).get(name);
  }

  /** The file that holds a tensor. */
  file(name: string): SafetensorsFile {
    const f = this.fileOf.get(name);
    if (!f) throw new Error(`${this.dir}: no weight named "${name}"${suggest(name, this.fileOf.keys(), this.fileOf.size)}`);
    return f;
  }
}

/**
 * Opens the weights of a directory: `model.safetensors.index.json` (sharded), else `model.safetensors`, else
 * the `model*.safetensors` files together, else the only `*.safetensors` file. A path to a .safetensors file
 * opens that file alone.
 */
export function openCheckpoint(path: string): Checkpoint {
  if (!existsSync(path)) throw new Error(`openCheckpoint: ${path} does not exist`);
  if (!statSync(path).isDirectory()) return single(path, readSafetensors(path));

  const indexPath = join(path, INDEX_FILE);
  if (existsSync(indexPath)) return openSharded(path, indexPath);
  if (existsSync(join(path, 'model.safetensors'))) return single(path, readSafetensors(join(path, 'model.safetensors')));

  const all = readdirSync(path)
    .filter((f) => f.endsWith('.safetensors'))
    .sort();
  const modelFiles = all.filter((f) => f.startsWith('model'));
  const chosen = modelFiles.length > 0 ? modelFiles : all.length === 1 ? all : [];
  if (chosen.length === 0) {
    const why = all.length === 0 ? 'no .safetensors file' : `several .safetensors files and no ${INDEX_FILE} (${all.join(', ')})`;
    throw new Error(`openCheckpoint: ${path} has ${why}`);
  }
  return union(
    path,
    chosen.map((f) => readSafetensors(join(path, f))),
  );
}

function single(dir: string, file: SafetensorsFile): Checkpoint {
  return new Checkpoint(dir, null, [file], new Map(file.names.map((n) => [n, file])));
}

/** Several files without an index: every tensor must be in exactly one. */
function union(dir: string, files: SafetensorsFile[]): Checkpoint {
  const fileOf = new Map<string, SafetensorsFile>();
  for (const f of files) {
    for (const name of f.names) {
      const other = fileOf.get(name);
      if (other) throw new Error(`openCheckpoint: tensor "${name}" is in both ${other.path} and ${f.path}`);
      fileOf.set(name, f);
    }
  }
  return new Checkpoint(dir, null, files, fileOf);
}

function openSharded(dir: string, indexPath: string): Checkpoint {
  const weightMap = readWeightMap(indexPath);
  const shardNames = [...new Set(Object.values(weightMap))];
  const missing = shardNames.filter((s) => !existsSync(join(dir, s)));
  if (missing.length > 0) {
    const what = missing.length === 1 ? `shard ${missing[0]} is` : `shards ${missing.join(', ')} are`;
    throw new Error(`${indexPath}: ${what} missing from ${dir} (named in the index's weight_map)`);
  }
  const shards = new Map(shardNames.map((s) => [s, readSafetensors(join(dir, s))]));
  const fileOf = new Map<string, SafetensorsFile>();
  for (const [name, shard] of Object.entries(weightMap)) {
    const file = shards.get(shard)!;
    if (!file.has(name)) throw new Error(`${indexPath}: weight_map puts "${name}" in ${shard}, but ${file.path} has no such tensor`);
    fileOf.set(name, file);
  }
  return new Checkpoint(dir, indexPath, [...shards.values()], fileOf);
}

function readWeightMap(indexPath: string): Record<string, string> {
  let index: unknown;
  try {
    index = JSON.parse(readFileSync(indexPath, 'utf8'));
  } catch (err) {
    throw new Error(`${indexPath}: not valid JSON (${(err as Error).message})`);
  }
  const weightMap = isPlainObject(index) ? index.weight_map : undefined;
  if (!isPlainObject(weightMap)) throw new Error(`${indexPath}: no "weight_map" object (tensor name -> shard file)`);
  for (const [name, shard] of Object.entries(weightMap)) {
    if (typeof shard !== 'string' || shard === '') {
      throw new Error(`${indexPath}: weight_map["${name}"] must be a shard file name, got ${JSON.stringify(shard)}`);
    }
  }
  return weightMap as Record<string, string>;
}

// ---- helpers ------------------------------------------------------------------------------------------------------

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function describeJson(v: unknown): string {
  const s = JSON.stringify(v) ?? String(v);
  return s.length > 60 ? `${s.slice(0, 57)}...` : s;
}

/** "; close names: a, b, c" for a missing name: the nearest few by edit distance. */
export function suggest(name: string, candidates: Iterable<string>, count: number, limit = 5): string {
  if (count === 0) return ' (there are no tensors)';
  const ranked = [...candidates]
    .map((c) => ({ c, d: editDistance(name, c) }))
    .sort((a, b) => a.d - b.d || (a.c < b.c ? -1 : 1))
    .slice(0, limit)
    .map(({ c }) => c);
  return ` (${count} names; closest: ${ranked.join(', ')})`;
}

function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) {
      cur[j] = Math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    prev = cur;
  }
  return prev[b.length];
}
