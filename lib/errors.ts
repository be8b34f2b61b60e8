/**
 * Named errors. Every failure peft-node raises — in TS or in the native addon — is a {@link PeftNodeError} with a
 * stable `code`, so callers can branch on `err.code` (the README lists the codes).
 */

/** Stable error codes. */
export type PeftNodeErrorCode =
  | 'ERR_FILE_NOT_FOUND'
  | 'ERR_IO'
  | 'ERR_JSON'
  | 'ERR_CONFIG'
  | 'ERR_UNSUPPORTED_MODEL'
  | 'ERR_UNSUPPORTED_ADAPTER'
  | 'ERR_SAFETENSORS_HEADER'
  | 'ERR_SAFETENSORS_DTYPE'
  | 'ERR_SAFETENSORS_OFFSETS'
  | 'ERR_WEIGHT_MISSING'
  | 'ERR_SHAPE_MISMATCH'
  | 'ERR_INVALID_INPUT'
  | 'ERR_DEVICE'
  | 'ERR_DISPOSED'
  | 'ERR_TORCH'
  | 'ERR_ADDON_LOAD'
  | 'ERR_LIBTORCH_NOT_FOUND';

export class PeftNodeError extends Error {
  readonly code: PeftNodeErrorCode;
  constructor(code: PeftNodeErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'PeftNodeError';
    this.code = code;
  }
}

/** Re-throws an error from the native addon as a PeftNodeError, keeping its code and message. */
export function rethrowNative(err: unknown): never {
  if (err instanceof PeftNodeError) throw err;
  // Duck-typed: errors made by the addon come from Node's main realm, so `instanceof Error` fails inside vm contexts.
  if (typeof err === 'object' && err !== null && typeof (err as Error).message === 'string') {
    const code = (err as Error & { code?: string }).code;
    throw new PeftNodeError((code as PeftNodeErrorCode) ?? 'ERR_TORCH', (err as Error).message, { cause: err });
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
