/**
 * Safetensors in TS: reading small files (adapters, golden dumps) and writing adapters exactly as the Python
 * `safetensors` package does (compact JSON header padded with spaces to a multiple of 8). Writes are atomic.
 */
import * as fs from 'node:fs';
import { nestingTooDeep } from '../data/json';
import { PeftNodeError } from '../errors';
import { writeFileAtomic } from './fs_atomic';
import { Tensor, TensorType } from '../tensor';

const DTYPES: Record<string, { type: TensorType; bytes: number } | undefined> = {
  F32: { type: 'float32', bytes: 4 },
  F64: { type: 'float64', bytes: 8 },
  I32: { type: 'int32', bytes: 4 },
  I64: { type: 'int64', bytes: 8 },
  F16: { type: 'float32', bytes: 2 }, // widened to float32 on read
  BF16: { type: 'float32', bytes: 2 }, // widened to float32 on read
};
const NAMES: Record<TensorType, string> = { float32: 'F32', float64: 'F64', int32: 'I32', int64: 'I64' };

export interface SafetensorsContent {
  tensors: Map<string, Tensor>;
  metadata: Record<string, string>;
}

function halfToFloat(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const f = h & 0x3ff;
  if (e === 0) return s * 2 ** -14 * (f / 1024);
  if (e === 31) return f ? NaN : s * Infinity;
  return s * 2 ** (e - 15) * (1 + f / 1024);
}

/** The same cap as the safetensors reference implementation (and native/core/safetensors.cpp). */
const MAX_HEADER_BYTES = 100 * 1024 * 1024;

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/**
 * Reads every tensor of a safetensors file into memory (for small files; models load natively by mmap). The header
 * is validated as the native reader does it: a malformed file is a PeftNodeError (ERR_SAFETENSORS_HEADER / _DTYPE /
 * _OFFSETS) naming the file and the tensor, never a TypeError or an out-of-bounds read.
 */
export function readSafetensors(file: string): SafetensorsContent {
  if (!fs.existsSync(file)) throw new PeftNodeError('ERR_FILE_NOT_FOUND', `file not found: ${file}`);
  let buf: Buffer;
  try {
    buf = fs.readFileSync(file);
  } catch (err) {
    throw new PeftNodeError('ERR_IO', `cannot read ${file}: ${(err as Error).message}`, { cause: err });
  }
  const header_ = (msg: string) => new PeftNodeError('ERR_SAFETENSORS_HEADER', `${file}: ${msg}`);
  const offsets_ = (msg: string) => new PeftNodeError('ERR_SAFETENSORS_OFFSETS', `${file}: ${msg}`);
  if (buf.length < 8) throw header_(`truncated safetensors header (file has ${buf.length} bytes, needs at least 8)`);
  const n = buf.readBigUInt64LE(0);
  if (n > BigInt(MAX_HEADER_BYTES)) throw header_(`header length ${n} exceeds the 100 MB limit`);
  if (n > BigInt(buf.length - 8)) throw header_(`header length ${n} goes beyond the end of the file (${buf.length} bytes)`);
  const headerEnd = 8 + Number(n);
  const dataSize = buf.length - headerEnd;
  let header: unknown;
  const headerText = buf.subarray(8, headerEnd).toString('utf8');
  try {
    header = JSON.parse(headerText);
  } catch (err) {
    throw header_(`header is not valid JSON (${(err as Error).message})`);
  }
  if (nestingTooDeep(headerText, 64) >= 0) throw header_('header is nested too deeply to be a safetensors header');
  if (!isObject(header)) throw header_('safetensors header is not a JSON object');
  const tensors = new Map<string, Tensor>();
  const spans: [number, number, string][] = [];
  let metadata: Record<string, string> = {};
  for (const [name, entry] of Object.entries(header)) {
    if (name === '__metadata__') {
      if (!isObject(entry) || Object.values(entry).some((v) => typeof v !== 'string'))
        throw header_('__metadata__ must be an object of strings');
      metadata = entry as Record<string, string>;
      continue;
    }
    const where = `tensor '${name}'`;
    if (!isObject(entry)) throw header_(`${where} entry is not an object`);
    const { dtype, shape, data_offsets } = entry;
    if (typeof dtype !== 'string') throw header_(`${where} has no string 'dtype'`);
    if (!Array.isArray(shape)) throw header_(`${where} has no array 'shape'`);
    if (!Array.isArray(data_offsets) || data_offsets.length !== 2) throw header_(`${where} has no 'data_offsets' pair`);
    const spec = DTYPES[dtype];
    if (!spec) throw new PeftNodeError('ERR_SAFETENSORS_DTYPE', `${file}: ${where} has unsupported dtype '${dtype}'`);
    let numel = 1n;
    for (const d of shape) {
      if (!Number.isSafeInteger(d) || (d as number) < 0) throw header_(`${where} has a non-integer or negative dimension (${JSON.stringify(d)})`);
      numel *= BigInt(d as number);
    }
    const [begin, end] = data_offsets;
    if (!Number.isSafeInteger(begin) || !Number.isSafeInteger(end) || (begin as number) < 0 || (end as number) < 0)
      throw offsets_(`${where}: data_offsets must be non-negative integers`);
    const b = begin as number, e = end as number;
    if (b > e) throw offsets_(`${where}: data_offsets begin > end`);
    if (e > dataSize) throw offsets_(`${where}: data_offsets [${b}, ${e}] go beyond the file's data section (${dataSize} bytes)`);
    if (numel * BigInt(spec.bytes) !== BigInt(e - b))
      throw offsets_(`${where}: ${e - b} bytes in data_offsets do not match shape x dtype (${numel} x ${spec.bytes} bytes)`);
    spans.push([b, e, name]);
    const count = Number(numel);
    const copy = new Uint8Array(buf.subarray(headerEnd + b, headerEnd + e)).buffer; // aligned copy
    let data;
    if (dtype === 'F16' || dtype === 'BF16') {
      const u16 = new Uint16Array(copy);
      const f = new Float32Array(count);
      const view = new DataView(new ArrayBuffer(4));
      for (let i = 0; i < count; i++) {
        if (dtype === 'F16') f[i] = halfToFloat(u16[i]);
        else {
          view.setUint32(0, u16[i] << 16);
          f[i] = view.getFloat32(0);
        }
      }
      data = f;
    } else if (spec.type === 'float32') data = new Float32Array(copy);
    else if (spec.type === 'float64') data = new Float64Array(copy);
    else if (spec.type === 'int32') data = new Int32Array(copy);
    else data = new BigInt64Array(copy);
    tensors.set(name, new Tensor(spec.type, data, shape as number[]));
  }
  // Overlapping tensors would alias each other's bytes (empty tensors overlap nothing).
  spans.sort((x, y) => x[0] - y[0]);
  for (let i = 1; i < spans.length; i++)
    if (spans[i][0] < spans[i - 1][1] && spans[i][0] !== spans[i][1])
      throw offsets_(`tensors '${spans[i - 1][2]}' and '${spans[i][2]}' overlap`);
  return { tensors, metadata };
}

/** What a safetensors header says about one tensor; its bytes follow the previous tensor's. */
export interface SafetensorsHeaderEntry {
  name: string;
  /** "F32", "BF16", ... */
  dtype: string;
  shape: number[];
  byteLength: number;
}

/**
 * The start of a safetensors file up to its data: the 8-byte length and the compact JSON header padded with spaces
 * to a multiple of 8, as the Python package writes it. Data offsets are consecutive, in the given order.
 */
export function safetensorsHeader(entries: SafetensorsHeaderEntry[], metadata?: Record<string, string>): Buffer {
  const header: Record<string, unknown> = {};
  if (metadata) header.__metadata__ = metadata;
  let offset = 0;
  for (const e of entries) {
    header[e.name] = { dtype: e.dtype, shape: e.shape, data_offsets: [offset, offset + e.byteLength] };
    offset += e.byteLength;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - (Buffer.byteLength(json) % 8)) % 8);
  const headerBytes = Buffer.from(json, 'utf8');
  const out = Buffer.alloc(8 + headerBytes.length);
  out.writeBigUInt64LE(BigInt(headerBytes.length), 0);
  headerBytes.copy(out, 8);
  return out;
}

/** The bytes of a safetensors file, laid out as the Python package writes them (tensors in the given order). */
export function serializeSafetensors(tensors: [string, Tensor][], metadata?: Record<string, string>): Buffer {
  const head = safetensorsHeader(
    tensors.map(([name, t]) => ({ name, dtype: NAMES[t.type], shape: t.dims, byteLength: t.data.byteLength })),
    metadata,
  );
  const offset = tensors.reduce((n, [, t]) => n + t.data.byteLength, 0);
  const out = Buffer.alloc(head.length + offset);
  head.copy(out, 0);
  let pos = head.length;
  for (const [, t] of tensors) {
    Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength).copy(out, pos);
    pos += t.data.byteLength;
  }
  return out;
}

/** Writes a safetensors file atomically. */
export function writeSafetensors(file: string, tensors: [string, Tensor][], metadata?: Record<string, string>): void {
  writeFileAtomic(file, serializeSafetensors(tensors, metadata));
}
