/**
 * A CPU tensor as transformers.js shapes it: `{ type, data, dims }`. Values live in a typed array; peft-node uses it
 * to hand inputs to and results from the native addon.
 */
import { PeftNodeError, repr } from './errors';

export type TensorType = 'float32' | 'float64' | 'int32' | 'int64';
export type TensorData = Float32Array | Float64Array | Int32Array | BigInt64Array;

/** Nested number arrays, as a user writes `[[1, 2], [3, 4]]`. */
export type NestedNumbers = number | NestedNumbers[];

/**
 * The typed-array kind of `x` ("Float32Array", ...), by tag rather than `instanceof`: arrays made by the native addon
 * belong to Node's main realm, which differs from the realm of a vm context such as a jest test.
 */
export function typedArrayKind(x: unknown): string | undefined {
  if (!ArrayBuffer.isView(x)) return undefined;
  return Object.prototype.toString.call(x).slice(8, -1);
}

export function isFloatArray(x: unknown): x is Float32Array | Float64Array {
  const k = typedArrayKind(x);
  return k === 'Float32Array' || k === 'Float64Array';
}

const ARRAY_TYPES: Record<TensorType, new (n: number) => TensorData> = {
  float32: Float32Array,
  float64: Float64Array,
  int32: Int32Array,
  int64: BigInt64Array,
};

export class Tensor {
  readonly type: TensorType;
  readonly data: TensorData;
  readonly dims: number[];

  constructor(type: TensorType, data: TensorData, dims: number[]) {
    if (!Object.prototype.hasOwnProperty.call(ARRAY_TYPES, type))
      throw new PeftNodeError('ERR_INVALID_INPUT', `Tensor type must be one of ${Object.keys(ARRAY_TYPES).join(', ')}, got ${repr(type)}`);
    if (!Array.isArray(dims) || !dims.every((d) => Number.isSafeInteger(d) && d >= 0))
      throw new PeftNodeError('ERR_INVALID_INPUT', `Tensor dims must be an array of non-negative integers, got ${repr(dims)}`);
    const numel = dims.reduce((a, b) => a * b, 1);
    if (typedArrayKind(data) !== ARRAY_TYPES[type].name)
      throw new PeftNodeError('ERR_INVALID_INPUT', `Tensor of type ${type} needs a ${ARRAY_TYPES[type].name}`);
    if (data.length !== numel)
      throw new PeftNodeError('ERR_INVALID_INPUT', `Tensor data has ${data.length} elements but dims [${dims}] need ${numel}`);
    this.type = type;
    this.data = data;
    this.dims = [...dims];
  }

  get size(): number {
    return this.data.length;
  }

  /** Nested JS arrays of numbers (int64 values converted with Number()). */
  tolist(): NestedNumbers {
    const flat = Array.from(this.data as ArrayLike<number | bigint>, (v) => Number(v));
    if (this.dims.length === 0) return flat[0];
    const build = (offset: number, dim: number): NestedNumbers[] => {
      const n = this.dims[dim];
      if (dim === this.dims.length - 1) return flat.slice(offset, offset + n);
      const stride = this.dims.slice(dim + 1).reduce((a, b) => a * b, 1);
      return Array.from({ length: n }, (_, i) => build(offset + i * stride, dim + 1));
    };
    return build(0, 0);
  }

  /** Builds a tensor from nested arrays (rectangular), e.g. `Tensor.from([[1, 2]], 'int64')`. */
  static from(values: NestedNumbers, type: TensorType = 'float32'): Tensor {
    const dims: number[] = [];
    let probe: NestedNumbers = values;
    while (Array.isArray(probe)) {
      dims.push(probe.length);
      probe = probe[0];
    }
    const flat: number[] = [];
    const walk = (v: NestedNumbers, dim: number): void => {
      if (dim === dims.length) {
        if (typeof v !== 'number') throw new PeftNodeError('ERR_INVALID_INPUT', 'tensor values must be numbers');
        flat.push(v);
        return;
      }
      if (!Array.isArray(v) || v.length !== dims[dim])
        throw new PeftNodeError('ERR_INVALID_INPUT', `ragged nested array: expected length ${dims[dim]} at depth ${dim}`);
      for (const x of v) walk(x, dim + 1);
    };
    walk(values, 0);
    const data = new ARRAY_TYPES[type](flat.length);
    if (type === 'int64')
      flat.forEach((v, i) => {
        if (!Number.isSafeInteger(v)) throw new PeftNodeError('ERR_INVALID_INPUT', `int64 tensor values must be integers, found ${v}`);
        (data as BigInt64Array)[i] = BigInt(v);
      });
    else (data as Float32Array).set(flat);
    return new Tensor(type, data, dims);
  }
}

/** Anything accepted where an integer matrix [batch, seq_len] is expected. */
export type IntMatrixLike = Tensor | number[][] | number[];

/** Normalises ids / masks / labels to an Int32Array with dims [B, T] (a 1-D input is one row). */
export function toIntMatrix(x: IntMatrixLike, name: string): { data: Int32Array; dims: [number, number] } {
  let dims: number[];
  let values: ArrayLike<number | bigint>;
  if (x instanceof Tensor) {
    if (x.type === 'float32' || x.type === 'float64')
      throw new PeftNodeError('ERR_INVALID_INPUT', `${name} must be an integer tensor, got ${x.type}`);
    dims = x.dims;
    values = x.data as ArrayLike<number | bigint>;
  } else if (Array.isArray(x)) {
    const t = Tensor.from(x as NestedNumbers, 'float64');
    dims = t.dims;
    values = t.data as Float64Array;
  } else {
    throw new PeftNodeError('ERR_INVALID_INPUT', `${name} must be a Tensor or an array of integers`);
  }
  if (dims.length === 1) dims = [1, dims[0]];
  if (dims.length !== 2 || dims[0] < 1 || dims[1] < 1)
    throw new PeftNodeError('ERR_INVALID_INPUT', `${name} must be a non-empty [batch, seq_len] array, got dims [${dims}]`);
  const out = new Int32Array(values.length);
  for (let i = 0; i < values.length; i++) {
    const v = Number(values[i]);
    if (!Number.isInteger(v) || v < -2147483648 || v > 2147483647)
      throw new PeftNodeError('ERR_INVALID_INPUT', `${name} must hold 32-bit integers, found ${values[i]}`);
    out[i] = v;
  }
  return { data: out, dims: [dims[0], dims[1]] };
}
