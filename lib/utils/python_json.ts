/**
 * `json.dumps(obj, indent=…, sort_keys=…)` as Python writes it (ensure_ascii on), so files PEFT reads and writes
 * (adapter_config.json) come out byte-identical. Supports what such files hold: null, booleans, integers, finite
 * floats in Python's repr, strings, arrays and plain objects.
 */
import { PeftNodeError } from '../errors';

/** Python's float repr: shortest round-trip digits, exponent form outside [1e-4, 1e16), always a '.0' or exponent. */
function pythonFloat(x: number): string {
  if (!Number.isFinite(x)) throw new PeftNodeError('ERR_INVALID_INPUT', `cannot write ${x} as JSON`);
  if (Number.isInteger(x) && Math.abs(x) < 1e16) return x.toFixed(1);
  const abs = Math.abs(x);
  if (abs >= 1e-4 && abs < 1e16) return String(x);
  // JS gives "1e-7" / "1.5e+21"; Python gives "1e-07" / "1.5e+21".
  const [mant, exp] = x.toExponential().split('e');
  const sign = exp[0] === '-' ? '-' : '+';
  const digits = exp.replace(/^[+-]/, '').padStart(2, '0');
  return `${mant}e${sign}${digits}`;
}

/** JSON string with Python's ensure_ascii escaping (every non-ASCII or DEL character as \uXXXX, lowercase hex). */
function pythonString(s: string): string {
  return JSON.stringify(s).replace(/[\u007f-\uffff]/g, (c) => '\\u' + c.charCodeAt(0).toString(16).padStart(4, '0'));
}

export interface PythonJsonOptions {
  indent?: number;
  sort_keys?: boolean;
  /** Values that are integers in Python (JS numbers cannot tell 1 from 1.0). Keys listed here print as floats. */
  float_keys?: ReadonlySet<string>;
}

export function pythonJsonDumps(value: unknown, options: PythonJsonOptions = {}): string {
  const indent = options.indent;
  const write = (v: unknown, depth: number, key?: string): string => {
    if (v === null || v === undefined) return 'null';
    if (typeof v === 'boolean') return v ? 'true' : 'false';
    if (typeof v === 'number') {
      if (key !== undefined && options.float_keys?.has(key)) return pythonFloat(v);
      return Number.isInteger(v) ? String(v) : pythonFloat(v);
    }
    if (typeof v === 'string') return pythonString(v);
    const pad = indent === undefined ? '' : '\n' + ' '.repeat(indent * (depth + 1));
    const close = indent === undefined ? '' : '\n' + ' '.repeat(indent * depth);
    const sep = indent === undefined ? ', ' : ',';
    if (Array.isArray(v)) {
      if (v.length === 0) return '[]';
      return '[' + v.map((x) => pad + write(x, depth + 1)).join(sep) + close + ']';
    }
    if (typeof v === 'object') {
      let keys = Object.keys(v as object);
      if (keys.length === 0) return '{}';
      if (options.sort_keys) keys = keys.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
      return '{' + keys.map((k) => pad + pythonString(k) + ': ' + write((v as Record<string, unknown>)[k], depth + 1, k)).join(sep) + close + '}';
    }
    throw new PeftNodeError('ERR_INVALID_INPUT', `cannot write a ${typeof v} as JSON`);
  };
  return write(value, 0);
}
