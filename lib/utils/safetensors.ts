/**
 * Safetensors in TS: reading small files (adapters, golden dumps) and writing adapters exactly as the Python
 * `safetensors` package does (compact JSON header padded with spaces to a multiple of 8). Writes are atomic.
 */
import * as fs from 'node:fs';
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

/** Reads every tensor of a safetensors file into memory (for small files; models load natively by mmap). */
export function readSafetensors(file: string): SafetensorsContent {
  if (!fs.existsSync(file)) throw new PeftNodeError('ERR_FILE_NOT_FOUND', `file not found: ${file}`);
  const buf = fs.readFileSync(file);
  if (buf.length < 8) throw new PeftNodeError('ERR_SAFETENSORS_HEADER', `${file}: truncated safetensors header`);
  const n = buf.readBigUInt64LE(0);
  if (n > BigInt(buf.length - 8))
    throw new PeftNodeError('ERR_SAFETENSORS_HEADER', `${file}: header length ${n} goes beyond the end of the file`);
  const headerEnd = 8 + Number(n);
  let header: Record<string, unknown>;
  try {
    header = JSON.parse(buf.subarray(8, headerEnd).toString('utf8'));
  } catch (err) {
    throw new PeftNodeError('ERR_SAFETENSORS_HEADER', `${file}: header is not valid JSON (${(err as Error).message})`);
  }
  const tensors = new Map<string, Tensor>();
  let metadata: Record<string, string> = {};
  for (const [name, entry] of Object.entries(header)) {
    if (name === '__metadata__') {
      metadata = entry as Record<string, string>;
      continue;
    }
    const { dtype, shape, data_offsets } = entry as { dtype: string; shape: number[]; data_offsets: [number, number] };
    const spec = DTYPES[dtype];
    if (!spec) throw new PeftNodeError('ERR_SAFETENSORS_DTYPE', `${file}: tensor '${name}' has unsupported dtype '${dtype}'`);
    const numel = shape.reduce((a, b) => a * b, 1);
    const [begin, end] = data_offsets;
    if (end - begin !== numel * spec.bytes || headerEnd + end > buf.length || begin > end)
      throw new PeftNodeError('ERR_SAFETENSORS_OFFSETS', `${file}: tensor '${name}' has offsets that do not match its shape`);
    const bytes = buf.subarray(headerEnd + begin, headerEnd + end);
    const copy = new Uint8Array(bytes).buffer; // aligned copy
    let data;
    if (dtype === 'F16' || dtype === 'BF16') {
      const u16 = new Uint16Array(copy);
      const f = new Float32Array(numel);
      const view = new DataView(new ArrayBuffer(4));
      for (let i = 0; i < numel; i++) {
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
    tensors.set(name, new Tensor(spec.type, data, shape));
  }
  return { tensors, metadata };
}

/** The bytes of a safetensors file, laid out as the Python package writes them (tensors in the given order). */
export function serializeSafetensors(tensors: [string, Tensor][], metadata?: Record<string, string>): Buffer {
  const header: Record<string, unknown> = {};
  if (metadata) header.__metadata__ = metadata;
  let offset = 0;
  for (const [name, t] of tensors) {
    const size = t.data.byteLength;
    header[name] = { dtype: NAMES[t.type], shape: t.dims, data_offsets: [offset, offset + size] };
    offset += size;
  }
  let json = JSON.stringify(header);
  const pad = (8 - (Buffer.byteLength(json) % 8)) % 8;
  json += ' '.repeat(pad);
  const headerBytes = Buffer.from(json, 'utf8');
  const out = Buffer.alloc(8 + headerBytes.length + offset);
  out.writeBigUInt64LE(BigInt(headerBytes.length), 0);
  headerBytes.copy(out, 8);
  let pos = 8 + headerBytes.length;
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
