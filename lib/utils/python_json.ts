/**
 * `json.dumps(obj, indent=…, sort_keys=…)` as Python writes it (ensure_ascii on), so files PEFT reads and writes
 * (adapter_config.json) come out byte-identical. Supports what such files hold: null, booleans, integers, finite
 * floats in Python's repr (NaN and ±Infinity as Python writes them), strings, arrays and plain objects;
 * {@link parsePythonJson} reads such text back.
 */
import * as fs from 'node:fs';
import { MAX_JSON_DEPTH, nestingTooDeep, parseJson } from '../data/json';
import { PeftNodeError } from '../errors';

/** Python's float repr: shortest round-trip digits, exponent form outside [1e-4, 1e16), always a '.0' or exponent. */
function pythonFloat(x: number): string {
  // json.dumps' default allow_nan=True: HF's trainer_state.json holds NaN when a grad_norm or unfiltered loss was NaN.
  if (Number.isNaN(x)) return 'NaN';
  if (!Number.isFinite(x)) return x > 0 ? 'Infinity' : '-Infinity';
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

const NON_FINITE: Record<string, number> = { '\u0000NaN': NaN, '\u0000Infinity': Infinity, '\u0000-Infinity': -Infinity };

/**
 * `json.loads` for files Python's json wrote: standard JSON plus the bare `NaN`, `Infinity` and `-Infinity` that
 * `json.dumps` emits for non-finite floats. Invalid text throws ERR_JSON naming `file`, line and column.
 */
export function parsePythonJson(text: string, file: string): unknown {
  let first: unknown;
  try {
    return parseJson(text, file); // also refuses nesting deeper than MAX_JSON_DEPTH
  } catch (err) {
    first = err;
  }
  if (!/NaN|Infinity/.test(text)) throw first;
  let out = '';
  let changed = false;
  for (let i = 0; i < text.length; ) {
    const c = text[i];
    if (c === '"') {
      let j = i + 1;
      while (j < text.length && text[j] !== '"') j += text[j] === '\\' ? 2 : 1;
      out += text.slice(i, j + 1);
      i = j + 1;
      continue;
    }
    const lit = text.startsWith('NaN', i) ? 'NaN' : text.startsWith('-Infinity', i) ? '-Infinity' : text.startsWith('Infinity', i) ? 'Infinity' : null;
    if (lit) {
      out += JSON.stringify('\u0000' + lit);
      i += lit.length;
      changed = true;
      continue;
    }
    out += c;
    i++;
  }
  if (!changed) throw first;
  let value: unknown;
  try {
    value = JSON.parse(out, (_k, v) => (typeof v === 'string' && v in NON_FINITE ? NON_FINITE[v] : v));
  } catch {
    throw first; // located on the original text
  }
  if (nestingTooDeep(out) >= 0) throw new PeftNodeError('ERR_JSON', `${file}: nesting deeper than ${MAX_JSON_DEPTH} levels`);
  return value;
}

/**
 * A JSON object file (config.json, adapter_config.json, trainer_state.json, ...): ERR_IO when unreadable, ERR_JSON
 * with line and column when malformed, ERR_CONFIG "<file>: expected a JSON object" otherwise. `python_literals`
 * accepts the NaN / Infinity that Python's json writes.
 */
export function readJsonObject(file: string, options: { python_literals?: boolean } = {}): Record<string, unknown> {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new PeftNodeError('ERR_IO', `cannot read ${file}: ${(err as Error).message}`, { cause: err });
  }
  const raw = options.python_literals ? parsePythonJson(text, file) : parseJson(text, file);
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw))
    throw new PeftNodeError('ERR_CONFIG', `${file}: expected a JSON object`);
  return raw as Record<string, unknown>;
}
