// safetensors reading (mmap, zero-copy), writing, validation of bad files, and sharded checkpoints.
import { closeSync, mkdirSync, mkdtempSync, openSync, rmSync, truncateSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { cpu, type CpuStorage } from '../src/backend/cpu.ts';
import { itemSize, type DType, type StorageArray } from '../src/dtype.ts';
import { loadSafetensors, openCheckpoint, readSafetensors, saveSafetensors } from '../src/io/safetensors.ts';
import { native } from '../src/native.ts';
import { Tensor } from '../src/tensor.ts';

const tmp = mkdtempSync(join(tmpdir(), 'tl-safetensors-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));
let counter = 0;
const tmpPath = (name = 'f.safetensors') => join(tmp, `${counter++}-${name}`);

/** A CPU tensor over a copy of `data` (storage form: half types as raw 16-bit words). */
function make(dtype: DType, shape: number[], data: StorageArray): Tensor {
  return new Tensor(cpu.upload(data), dtype, shape);
}

/** Storage-form values (raw words for half types), contiguous. */
function raw(t: Tensor): number[] {
  return Array.from(cpu.readSync(t) as ArrayLike<number>);
}

function bufferOf(t: Tensor): ArrayBuffer {
  return (t.storage as CpuStorage).buffer;
}

/** A file by hand: 8-byte length, the header text exactly as given, then `data`. */
function writeRaw(path: string, headerText: string, data: Uint8Array = new Uint8Array(0), declaredLength?: number): void {
  const header = new TextEncoder().encode(headerText);
  const out = new Uint8Array(8 + header.length + data.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(declaredLength ?? header.length), true);
  out.set(header, 8);
  out.set(data, 8 + header.length);
  writeFileSync(path, out);
}

describe('native.mmapFile', () => {
  it('maps a file as an ArrayBuffer, and an empty file as a zero-length one', () => {
    const p = tmpPath('hello.bin');
    writeFileSync(p, 'hello');
    expect(new TextDecoder().decode(native.mmapFile(p))).toBe('hello');
    const empty = tmpPath('empty.bin');
    writeFileSync(empty, '');
    expect((native.mmapFile(empty) as ArrayBuffer).byteLength).toBe(0);
  });

  it('names the path and the reason when it cannot map', () => {
    expect(() => native.mmapFile(join(tmp, 'nope.bin'))).toThrow(/nope\.bin: No such file or directory/);
    expect(() => native.mmapFile(tmp)).toThrow(new RegExp(`${tmp}: Is a directory`));
    let error: unknown;
    try {
      native.mmapFile(join(tmp, 'nope.bin'));
    } catch (err) {
      error = err;
    }
    expect(error).toMatchObject({ code: 'ENOENT', path: join(tmp, 'nope.bin') });
  });

  it('reports a path through a regular file (an error even root gets)', () => {
    const p = tmpPath('plain.bin');
    writeFileSync(p, 'x');
    expect(() => native.mmapFile(join(p, 'inside.bin'))).toThrow(/inside\.bin: Not a directory/);
  });

  it('writes to the mapping stay private (copy-on-write), the file is unchanged', () => {
    const p = tmpPath('cow.bin');
    writeFileSync(p, new Uint8Array([1, 2, 3]));
    new Uint8Array(native.mmapFile(p))[0] = 99;
    expect(Array.from(new Uint8Array(native.mmapFile(p)))).toEqual([1, 2, 3]);
  });

  it('maps files past 2 GiB (sparse file) and reads tensors beyond the 2 GiB mark', () => {
    const p = tmpPath('big.safetensors');
    const pad = 2 ** 31 + 2 ** 29; // 2.5 GiB of zeros ahead of the tensor we read
    const header = JSON.stringify({
      pad: { dtype: 'U8', shape: [pad], data_offsets: [0, pad] },
      tail: { dtype: 'F32', shape: [2], data_offsets: [pad, pad + 8] },
    }).padEnd(200, ' ');
    const prefix = new Uint8Array(8 + header.length);
    new DataView(prefix.buffer).setBigUint64(0, BigInt(header.length), true);
    prefix.set(new TextEncoder().encode(header), 8);
    writeFileSync(p, prefix);
    truncateSync(p, prefix.length + pad + 8); // sparse: takes no disk space
    const fd = openSync(p, 'r+');
    writeSync(fd, new Uint8Array(new Float32Array([1.5, -2]).buffer), 0, 8, prefix.length + pad);
    closeSync(fd);
    try {
      const file = readSafetensors(p);
      expect(file.buffer.byteLength).toBe(prefix.length + pad + 8);
      expect(Array.from(file.get('tail').toArray())).toEqual([1.5, -2]);
      expect(file.info('pad').shape).toEqual([pad]);
    } finally {
      rmSync(p);
    }
  });
});

describe('saveSafetensors / readSafetensors round trip', () => {
  const f16 = [0x3c00, 0xc000, 0x7c00, 0xfc00, 0x7e00, 0x0001]; // 1, -2, inf, -inf, NaN, smallest subnormal
  const bf16 = [0x3f80, 0xc000, 0x7f80, 0xff80, 0x7fc1, 0x0001];
  const cases: [string, DType, number[], StorageArray][] = [
    ['f32', 'float32', [2, 3], new Float32Array([0, -1.5, 3.25, 1e-30, -Infinity, NaN])],
    ['f16', 'float16', [3, 2], new Uint16Array(f16)],
    ['bf16', 'bfloat16', [6], new Uint16Array(bf16)],
    ['i32', 'int32', [2, 2], new Int32Array([-2147483648, -1, 0, 2147483647])],
    ['u32', 'uint32', [4], new Uint32Array([0, 1, 0xdeadbeef, 0xffffffff])],
    ['u8', 'uint8', [1, 3], new Uint8Array([0, 7, 255])],
    ['bool', 'bool', [5], new Uint8Array([1, 0, 0, 1, 1])],
    ['scalar', 'float32', [], new Float32Array([42])],
    ['empty', 'int32', [0, 3], new Int32Array(0)],
  ];

  it('keeps the dtype, shape and exact bits of every dtype, and the metadata', () => {
    const path = tmpPath();
    const tensors = Object.fromEntries(cases.map(([name, dtype, shape, data]) => [name, make(dtype, shape, data)]));
    saveSafetensors(path, tensors, { format: 'pt', note: 'round trip' });

    const file = readSafetensors(path);
    expect(file.metadata).toEqual({ format: 'pt', note: 'round trip' });
    expect(new Set(file.names)).toEqual(new Set(cases.map(([name]) => name)));
    for (const [name, dtype, shape, data] of cases) {
      expect(file.info(name)).toMatchObject({ dtype, shape });
      const t = file.get(name);
      expect(t.dtype).toBe(dtype);
      expect(t.shape).toEqual(shape);
      expect(raw(t)).toEqual(Array.from(data as ArrayLike<number>));
    }
    // Half types read back through toArray as floats.
    expect(Array.from(file.get('bf16').toArray()).slice(0, 4)).toEqual([1, -2, Infinity, -Infinity]);
    expect(Array.from(file.get('f16').toArray()).slice(0, 4)).toEqual([1, -2, Infinity, -Infinity]);
  });

  it('accepts a Map and loadSafetensors returns every tensor', () => {
    const path = tmpPath();
    saveSafetensors(path, new Map([['a', make('int32', [2], new Int32Array([5, 6]))]]));
    const all = loadSafetensors(path);
    expect([...all.keys()]).toEqual(['a']);
    expect(raw(all.get('a')!)).toEqual([5, 6]);
    expect(readSafetensors(path).metadata).toEqual({});
  });

  it('writes non-contiguous views as their logical values (transpose, broadcast, steps, negative strides)', () => {
    const f32 = make('float32', [2, 3], new Float32Array([0, 1, 2, 3, 4, 5]));
    const bf = make('bfloat16', [2, 3], new Uint16Array([10, 11, 12, 13, 14, 15]));
    const u8 = make('uint8', [2, 3], new Uint8Array([1, 2, 3, 4, 5, 6]));
    const views = {
      transposed: f32.view([3, 2], [1, 3]), // [[0,3],[1,4],[2,5]]
      broadcast: f32.view([2, 2, 3], [0, 3, 1]), // the matrix twice
      stepped: f32.view([2, 2], [3, 2], 0), // columns 0 and 2
      reversed: f32.view([3], [-1], 5), // last row backwards: 5, 4, 3
      offset: f32.view([3], [1], 3), // contiguous, but not from the start
      bf16T: bf.view([3, 2], [1, 3]),
      u8Col: u8.view([2], [3], 1),
    };
    const path = tmpPath();
    saveSafetensors(path, views);
    const file = readSafetensors(path);
    expect(raw(file.get('transposed'))).toEqual([0, 3, 1, 4, 2, 5]);
    expect(raw(file.get('broadcast'))).toEqual([0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5]);
    expect(raw(file.get('stepped'))).toEqual([0, 2, 3, 5]);
    expect(raw(file.get('reversed'))).toEqual([5, 4, 3]);
    expect(raw(file.get('offset'))).toEqual([3, 4, 5]);
    expect(raw(file.get('bf16T'))).toEqual([10, 13, 11, 14, 12, 15]);
    expect(raw(file.get('u8Col'))).toEqual([2, 5]);
    expect(file.get('broadcast').shape).toEqual([2, 2, 3]);
  });

  it('refuses disposed tensors, non-tensors, a tensor named __metadata__ and non-string metadata', () => {
    const t = make('float32', [1], new Float32Array([1]));
    expect(() => saveSafetensors(tmpPath(), { x: 5 as unknown as Tensor })).toThrow(/"x" is not a Tensor/);
    expect(() => saveSafetensors(tmpPath(), { __metadata__: t })).toThrow(/reserved/);
    expect(() => saveSafetensors(tmpPath(), { t }, { n: 1 as unknown as string })).toThrow(/metadata "n" must be a string/);
    const gone = make('float32', [1], new Float32Array([1]));
    gone.dispose();
    expect(() => saveSafetensors(tmpPath(), { gone })).toThrow(/disposed/);
  });
});

describe('zero-copy reads', () => {
  it('returns views of the file mapping when the data is aligned (always, for files we write)', () => {
    const path = tmpPath();
    saveSafetensors(path, {
      b: make('uint8', [3], new Uint8Array([1, 2, 3])), // odd size, written after the wider ones
      h: make('bfloat16', [3], new Uint16Array([1, 2, 3])),
      w: make('float32', [2], new Float32Array([1, 2])),
      i: make('int32', [1], new Int32Array([7])),
    });
    const file = readSafetensors(path);
    const tensors = file.names.map((n) => file.get(n));
    for (const t of tensors) {
      expect(bufferOf(t)).toBe(file.buffer); // the same ArrayBuffer: the mapping itself, no copy
      expect((t.storage as CpuStorage).byteOffset % itemSize(t.dtype)).toBe(0);
    }
    // The header is padded so that the data section starts 8-aligned.
    const headerLength = Number(new DataView(file.buffer).getBigUint64(0, true));
    expect((8 + headerLength) % 8).toBe(0);
  });

  it('copies a tensor whose data is not aligned to its item size, and keeps byte tensors zero-copy', () => {
    // Header text of a length that puts the data start at 8 + 121 = 129: odd, so f32 data is misaligned.
    const headerText = JSON.stringify({
      x: { dtype: 'F32', shape: [2], data_offsets: [0, 8] },
      b: { dtype: 'U8', shape: [2], data_offsets: [8, 10] },
    }).padEnd(121, ' ');
    const data = new Uint8Array(10);
    data.set(new Uint8Array(new Float32Array([3.5, -1]).buffer), 0);
    data.set([9, 8], 8);
    const path = tmpPath();
    writeRaw(path, headerText, data);

    const file = readSafetensors(path);
    const x = file.get('x');
    expect(bufferOf(x)).not.toBe(file.buffer);
    expect(Array.from(x.toArray())).toEqual([3.5, -1]);
    const b = file.get('b');
    expect(bufferOf(b)).toBe(file.buffer);
    expect(Array.from(b.toArray())).toEqual([9, 8]);
  });

  it("cpu.releaseFilePages lets a mapped tensor's whole pages go; its values read the same after", () => {
    const path = tmpPath();
    const values = Float32Array.from({ length: 5000 }, (_, i) => i * 0.5 - 7);
    saveSafetensors(path, { w: make('float32', [50, 100], values), small: make('float32', [3], new Float32Array([1, 2, 3])) });
    const file = readSafetensors(path);
    const w = file.get('w');
    Array.from(w.toArray()); // resident
    const released = cpu.releaseFilePages(w);
    // 20000 bytes from a page boundary or past one: at least the 3 whole 4 KB pages inside, never more than it spans.
    expect(released).toBeGreaterThanOrEqual(3 * 4096);
    expect(released).toBeLessThanOrEqual(20000);
    expect(released % 4096).toBe(0);
    expect(Array.from(w.toArray())).toEqual(Array.from(values)); // read from the file again
    expect(cpu.releaseFilePages(file.get('small'))).toBe(0); // no whole page inside 12 bytes
    // Memory that is not a file mapping is never touched.
    const owned = make('float32', [50, 100], values);
    expect(cpu.releaseFilePages(owned)).toBe(0);
    expect(Array.from(owned.toArray())).toEqual(Array.from(values));
  });

  it('tensors of one file are independent: disposing one leaves the others readable', () => {
    const path = tmpPath();
    saveSafetensors(path, { a: make('float32', [1], new Float32Array([1])) });
    const file = readSafetensors(path);
    const a1 = file.get('a');
    const a2 = file.get('a');
    a1.dispose();
    expect(Array.from(a2.toArray())).toEqual([1]);
    expect(Array.from(file.get('a').toArray())).toEqual([1]);
  });
});

describe('bad safetensors files', () => {
  const goodHeader = { x: { dtype: 'F32', shape: [2], data_offsets: [0, 8] } };
  const file = (header: unknown, dataBytes = 8) => {
    const path = tmpPath('bad.safetensors');
    writeRaw(path, JSON.stringify(header), new Uint8Array(dataBytes));
    return path;
  };

  it('a file shorter than the length prefix', () => {
    const path = tmpPath('short.safetensors');
    writeFileSync(path, new Uint8Array(5));
    expect(() => readSafetensors(path)).toThrow(new RegExp(`${path}: not a safetensors file: 5 bytes`));
  });

  it('a header length past the end of the file', () => {
    const path = tmpPath('bad.safetensors');
    writeRaw(path, '{}', new Uint8Array(0), 1000);
    expect(() => readSafetensors(path)).toThrow(new RegExp(`${path}: header length 1000 runs past the end of the file \\(10 bytes\\)`));
  });

  it('a truncated file (cut inside the data)', () => {
    const path = tmpPath('cut.safetensors');
    saveSafetensors(path, { weights: make('float32', [64], new Float32Array(64)) });
    truncateSync(path, 100);
    expect(() => readSafetensors(path)).toThrow(/tensor "weights": data_offsets \[0, 256\] are out of range.*truncated/);
  });

  it('a truncated file (cut inside the header)', () => {
    const path = tmpPath('cut.safetensors');
    saveSafetensors(path, { weights: make('float32', [64], new Float32Array(64)) });
    truncateSync(path, 20);
    expect(() => readSafetensors(path)).toThrow(/runs past the end of the file \(20 bytes\)/);
  });

  it('a header length over the 100 MB limit, and a header that is not UTF-8', () => {
    const big = tmpPath('big-header.safetensors');
    // A sparse file long enough that the length fits in it: the limit, not the file size, must refuse it.
    const fd = openSync(big, 'w');
    const prefix = Buffer.alloc(8);
    prefix.writeBigUInt64LE(200_000_000n);
    writeSync(fd, prefix);
    closeSync(fd);
    truncateSync(big, 8 + 200_000_000);
    expect(() => readSafetensors(big)).toThrow(/header length 200000000 exceeds 100000000 bytes: not a safetensors file/);
    const latin1 = tmpPath('latin1.safetensors');
    const header = Buffer.from('{"caf\xe9": 1}', 'latin1');
    const out = Buffer.alloc(8 + header.length);
    out.writeBigUInt64LE(BigInt(header.length));
    header.copy(out, 8);
    writeFileSync(latin1, out);
    expect(() => readSafetensors(latin1)).toThrow(/the header is not valid UTF-8: not a safetensors file/);
  });

  it('invalid JSON, or JSON that is not an object', () => {
    const path = tmpPath('bad.safetensors');
    writeRaw(path, '{"x": {"dtype": "F32",');
    expect(() => readSafetensors(path)).toThrow(new RegExp(`${path}: the header is not valid JSON`));
    expect(() => readSafetensors(file([1, 2]))).toThrow(/the header must be a JSON object/);
  });

  it('an unknown or unsupported dtype, naming the tensor and the file', () => {
    const unknown = file({ w: { dtype: 'Q7', shape: [2], data_offsets: [0, 8] } });
    expect(() => readSafetensors(unknown)).toThrow(new RegExp(`${unknown}: tensor "w": unknown dtype "Q7" \\(supported: F32, F16, BF16`));
    const f64 = file({ w: { dtype: 'F64', shape: [1], data_offsets: [0, 8] } });
    expect(() => readSafetensors(f64)).toThrow(new RegExp(`${f64}: unsupported dtype F64 for tensor "w"`));
  });

  it('data out of range, sizes that do not match the shape, malformed shapes and offsets', () => {
    expect(() => readSafetensors(file({ x: { dtype: 'F32', shape: [4], data_offsets: [0, 16] } }))).toThrow(
      /tensor "x": data_offsets \[0, 16\] are out of range: the data section holds 8 bytes/,
    );
    expect(() => readSafetensors(file({ x: { dtype: 'F32', shape: [3], data_offsets: [0, 8] } }))).toThrow(
      /tensor "x": data_offsets \[0, 8\] hold 8 bytes, but F32\[3\] needs 12/,
    );
    expect(() => readSafetensors(file({ x: { dtype: 'F32', shape: [2.5], data_offsets: [0, 8] } }))).toThrow(
      /tensor "x": shape must be a list of non-negative integers, got \[2.5\]/,
    );
    expect(() => readSafetensors(file({ x: { dtype: 'F32', shape: [-2], data_offsets: [0, 8] } }))).toThrow(/shape must be/);
    expect(() => readSafetensors(file({ x: { dtype: 'F32', shape: [2], data_offsets: [8, 0] } }))).toThrow(/out of range/);
    expect(() => readSafetensors(file({ x: { dtype: 'F32', shape: [2], data_offsets: [0] } }))).toThrow(
      /data_offsets must be \[begin, end\]/,
    );
    expect(() => readSafetensors(file({ x: 'F32' }))).toThrow(/tensor "x": expected \{dtype, shape, data_offsets\}/);
    expect(() => readSafetensors(file({ ...goodHeader, __metadata__: [1] }))).toThrow(/__metadata__ must be an object/);
  });

  it('a missing tensor name lists close names', () => {
    const path = tmpPath();
    saveSafetensors(path, {
      'model.layers.0.self_attn.q_proj.weight': make('float32', [1], new Float32Array(1)),
      'model.layers.0.self_attn.k_proj.weight': make('float32', [1], new Float32Array(1)),
      'model.norm.weight': make('float32', [1], new Float32Array(1)),
    });
    expect(() => readSafetensors(path).get('model.layers.0.self_attn.q_proj.weights')).toThrow(
      /no tensor named "model.layers.0.self_attn.q_proj.weights" \(3 names; closest: model.layers.0.self_attn.q_proj.weight, /,
    );
  });

  it('a path that does not exist or is a directory', () => {
    expect(() => readSafetensors(join(tmp, 'missing.safetensors'))).toThrow(/missing\.safetensors: No such file or directory/);
    expect(() => readSafetensors(tmp)).toThrow(/Is a directory/);
  });
});

describe('openCheckpoint', () => {
  const t = (v: number[]) => make('float32', [v.length], new Float32Array(v));

  it('opens a single model.safetensors, ignoring other safetensors files beside it', () => {
    const dir = join(tmp, `single-${counter++}`);
    mkdirSync(dir);
    saveSafetensors(join(dir, 'model.safetensors'), { a: t([1]), b: t([2, 3]) });
    saveSafetensors(join(dir, 'golden.safetensors'), { g: t([0]) });
    const ckpt = openCheckpoint(dir);
    expect(ckpt.names.sort()).toEqual(['a', 'b']);
    expect(ckpt.has('a')).toBe(true);
    expect(ckpt.has('g')).toBe(false);
    expect(ckpt.indexPath).toBeNull();
    expect(Array.from(ckpt.get('b').toArray())).toEqual([2, 3]);
    expect(() => ckpt.get('c')).toThrow(/no weight named "c" \(2 names; closest: a, b\)/);
  });

  it('opens the only safetensors file of a directory, or a file path', () => {
    const dir = join(tmp, `only-${counter++}`);
    mkdirSync(dir);
    saveSafetensors(join(dir, 'weights.safetensors'), { a: t([4]) });
    expect(Array.from(openCheckpoint(dir).get('a').toArray())).toEqual([4]);
    expect(openCheckpoint(join(dir, 'weights.safetensors')).names).toEqual(['a']);
  });

  it('opens a sharded checkpoint through its index', () => {
    const dir = join(tmp, `sharded-${counter++}`);
    mkdirSync(dir);
    saveSafetensors(join(dir, 'model-00001-of-00002.safetensors'), { a: t([1]), b: t([2]) });
    saveSafetensors(join(dir, 'model-00002-of-00002.safetensors'), { c: t([3]) });
    const weightMap = {
      a: 'model-00001-of-00002.safetensors',
      b: 'model-00001-of-00002.safetensors',
      c: 'model-00002-of-00002.safetensors',
    };
    writeFileSync(join(dir, 'model.safetensors.index.json'), JSON.stringify({ metadata: {}, weight_map: weightMap }));
    const ckpt = openCheckpoint(dir);
    expect(ckpt.names.sort()).toEqual(['a', 'b', 'c']);
    expect(ckpt.files).toHaveLength(2);
    expect(Array.from(ckpt.get('c').toArray())).toEqual([3]);
    expect(ckpt.file('c').path).toBe(join(dir, 'model-00002-of-00002.safetensors'));
  });

  it('names the missing shard and the index file', () => {
    const dir = join(tmp, `missing-shard-${counter++}`);
    mkdirSync(dir);
    saveSafetensors(join(dir, 'model-00001-of-00002.safetensors'), { a: t([1]) });
    const index = join(dir, 'model.safetensors.index.json');
    writeFileSync(index, JSON.stringify({ weight_map: { a: 'model-00001-of-00002.safetensors', b: 'model-00002-of-00002.safetensors' } }));
    expect(() => openCheckpoint(dir)).toThrow(new RegExp(`${index}: shard model-00002-of-00002.safetensors is missing from ${dir}`));
  });

  it('reports an index entry that its shard does not hold, and a malformed index', () => {
    const dir = join(tmp, `bad-index-${counter++}`);
    mkdirSync(dir);
    saveSafetensors(join(dir, 'model-00001-of-00001.safetensors'), { a: t([1]) });
    const index = join(dir, 'model.safetensors.index.json');
    writeFileSync(index, JSON.stringify({ weight_map: { a: 'model-00001-of-00001.safetensors', z: 'model-00001-of-00001.safetensors' } }));
    expect(() => openCheckpoint(dir)).toThrow(/weight_map puts "z" in model-00001-of-00001.safetensors, but .* has no such tensor/);
    writeFileSync(index, JSON.stringify({ shards: [] }));
    expect(() => openCheckpoint(dir)).toThrow(/no "weight_map" object/);
    writeFileSync(index, '{not json');
    expect(() => openCheckpoint(dir)).toThrow(/model.safetensors.index.json: not valid JSON/);
  });

  it('refuses one tensor in two files of a checkpoint without an index', () => {
    const dir = join(tmp, `dup-${counter++}`);
    mkdirSync(dir);
    saveSafetensors(join(dir, 'model-00001-of-00002.safetensors'), { a: make('float32', [2], new Float32Array([1, 2])) });
    saveSafetensors(join(dir, 'model-00002-of-00002.safetensors'), { a: make('float32', [2], new Float32Array([3, 4])) });
    expect(() => openCheckpoint(dir)).toThrow(
      /tensor "a" is in both .*model-00001-of-00002\.safetensors and .*model-00002-of-00002\.safetensors/,
    );
  });

  it('refuses a directory without weights, or with several unrelated files and no index', () => {
    const empty = join(tmp, `empty-${counter++}`);
    mkdirSync(empty);
    expect(() => openCheckpoint(empty)).toThrow(/has no .safetensors file/);
    saveSafetensors(join(empty, 'x.safetensors'), { a: t([1]) });
    saveSafetensors(join(empty, 'y.safetensors'), { b: t([1]) });
    expect(() => openCheckpoint(empty)).toThrow(
      /several .safetensors files and no model.safetensors.index.json \(x.safetensors, y.safetensors\)/,
    );
    expect(() => openCheckpoint(join(tmp, 'nowhere'))).toThrow(/nowhere does not exist/);
  });
});
