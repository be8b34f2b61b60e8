/**
 * Named errors. Every failure peft-node raises — in TS or in the native addon — is a {@link PeftNodeError} with a
 * stable `code`, so callers can branch on `err.code` (the README lists the codes).
 */

/**
 * Every stable error code, in the README's order. `ERROR_CODES.includes(err.code)` tells a documented failure from a
 * bug (the fuzzer, scripts/fuzz, checks exactly that). The one list: native/core/error_codes.h is generated from it
 * (`node scripts/gen_error_codes.js`; a test fails when they differ).
 */
export const ERROR_CODES = [
  'ERR_FILE_NOT_FOUND',
  'ERR_IO',
  'ERR_JSON',
  'ERR_CONFIG',
  'ERR_UNSUPPORTED_MODEL',
  'ERR_UNSUPPORTED_ADAPTER',
  'ERR_SAFETENSORS_HEADER',
  'ERR_SAFETENSORS_DTYPE',
  'ERR_SAFETENSORS_OFFSETS',
  // pytorch_model.bin (zip + pickle) loading, raised natively
  'ERR_ZIP',
  'ERR_PICKLE',
  'ERR_UNSAFE_PICKLE',
  'ERR_CHECKPOINT_FORMAT',
  'ERR_WEIGHT_MISSING',
  'ERR_SHAPE_MISMATCH',
  'ERR_INVALID_INPUT',
  /** A computation that cannot fit in memory: refused before allocating, or the allocator failed. */
  'ERR_OUT_OF_MEMORY',
  /** Trainer: too many consecutive optimizer steps with a NaN/inf loss or gradient norm. */
  'ERR_NONFINITE_LOSS',
  'ERR_DEVICE',
  'ERR_DISPOSED',
  /** Data-parallel training: rendezvous failed, a peer process died or timed out, or ranks disagree. */
  'ERR_DISTRIBUTED',
  'ERR_TORCH',
  'ERR_ADDON_LOAD',
  'ERR_LIBTORCH_NOT_FOUND',
  'ERR_LIBTORCH_INVALID',
] as const;

/** Stable error codes. */
export type PeftNodeErrorCode = (typeof ERROR_CODES)[number];

/** Whether `code` is one of the documented {@link ERROR_CODES}. */
export function isErrorCode(code: unknown): code is PeftNodeErrorCode {
  return typeof code === 'string' && (ERROR_CODES as readonly string[]).includes(code);
}

export class PeftNodeError extends Error {
  readonly code: PeftNodeErrorCode;
  constructor(code: PeftNodeErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'PeftNodeError';
    this.code = code;
  }
}

const OUT_OF_MEMORY = /can't allocate memory|out of memory|not enough memory|std::bad_alloc/i;

/**
 * A short, never-throwing rendering of any value for error messages (JSON.stringify throws on BigInt and on cycles,
 * and returns undefined for functions).
 */
export function repr(v: unknown, max = 80): string {
  let s: string;
  if (typeof v === 'bigint') s = `${v}n`;
  else if (typeof v === 'function') s = `[function ${v.name || 'anonymous'}]`;
  else if (typeof v === 'symbol' || v === undefined) s = String(v);
  else if (typeof v === 'number') s = String(v); // NaN, Infinity as written in JS
  else {
    try {
      s = JSON.stringify(v, (_k, x) => (typeof x === 'bigint' ? `${x}n` : x)) ?? String(v);
    } catch {
      s = Object.prototype.toString.call(v);
    }
  }
  return s.length > max ? `${s.slice(0, max)}…` : s;
}

/**
 * Errors thrown by the caller's own code (a streamer callback) while native work ran: rethrowNative passes them on
 * unchanged instead of labelling them as libtorch failures.
 */
export const CALLER_ERRORS = new WeakSet<object>();

/** Re-throws an error from the native addon as a PeftNodeError, keeping its code and message. */
export function rethrowNative(err: unknown): never {
  if (err instanceof PeftNodeError) throw err;
  if (typeof err === 'object' && err !== null && CALLER_ERRORS.has(err)) throw err;
  // Duck-typed: errors made by the addon come from Node's main realm, so `instanceof Error` fails inside vm contexts.
  if (typeof err === 'object' && err !== null && typeof (err as Error).message === 'string') {
    const raw = (err as Error & { code?: unknown }).code;
    let message = (err as Error).message;
    let code: PeftNodeErrorCode = 'ERR_TORCH';
    if (isErrorCode(raw)) code = raw;
    else if (raw !== undefined) message = `${String(raw)}: ${message}`; // an undocumented code: keep it visible
    // libtorch's allocators report failures as plain c10::Errors; callers want to branch on them (smaller batch).
    if (code === 'ERR_TORCH' && OUT_OF_MEMORY.test(message)) code = 'ERR_OUT_OF_MEMORY';
    throw new PeftNodeError(code, message, { cause: err });
  }
  throw new PeftNodeError('ERR_TORCH', String(err));
}

/** Awaits a native Promise, converting its rejection into a PeftNodeError. */
export async function nativeCall<T>(p: Promise<T> | (() => Promise<T>)): Promise<T> {
  try {
    return await (typeof p === 'function' ? p() : p);
  } catch (err) {
    rethrowNative(err);
  }
}
