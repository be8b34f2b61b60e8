/**
 * JSON reading with error locations. V8's `JSON.parse` messages carry a character position only for some errors
 * (none for "Unexpected token ..."), so on failure a small validator finds the offending offset and the error names
 * the file, line and column — for whole-file JSON and for JSON Lines alike.
 */
import * as fs from 'node:fs/promises';
import { PeftNodeError } from '../errors';

/** 1-based line and column (in code points) of a UTF-16 offset in `text`. */
export function lineColumn(text: string, offset: number): { line: number; column: number } {
  let line = 1;
  let lineStart = 0;
  for (let i = text.indexOf('\n'); i !== -1 && i < offset; i = text.indexOf('\n', i + 1)) {
    line++;
    lineStart = i + 1;
  }
  return { line, column: [...text.slice(lineStart, offset)].length + 1 };
}

/**
 * Deepest nesting accepted. Python's json gives up near its recursion limit (1000) too; deeper documents would
 * overflow the stack of every recursive consumer (row copies, user code, JSON.stringify).
 */
export const MAX_JSON_DEPTH = 1000;

/** Offset of the bracket that nests deeper than `limit` in valid JSON `text`, or -1. */
export function nestingTooDeep(text: string, limit = MAX_JSON_DEPTH): number {
  let depth = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x22) {
      // Skip the string (the text is valid JSON: every string is closed).
      for (i++; i < text.length && text.charCodeAt(i) !== 0x22; i++) if (text.charCodeAt(i) === 0x5c) i++;
    } else if (c === 0x5b || c === 0x7b) {
      if (++depth > limit) return i;
    } else if (c === 0x5d || c === 0x7d) depth--;
  }
  return -1;
}

/** Offset and reason of the first syntax error in `text` (which `JSON.parse` rejected). */
export function findJsonError(text: string): { offset: number; reason: string } {
  let i = 0;
  class Fail {
    constructor(readonly offset: number, readonly reason: string) {}
  }
  // Running out of text is reported as such, except inside a string.
  const fail = (reason: string, atEnd = 'unexpected end of input'): never => {
    throw new Fail(i, i >= text.length ? atEnd : reason);
  };
  const ws = (): void => {
    while (i < text.length && (text[i] === ' ' || text[i] === '\t' || text[i] === '\n' || text[i] === '\r')) i++;
  };
  const str = (): void => {
    i++; // opening quote
    for (;;) {
      const c = text[i];
      if (c === undefined) fail('unterminated string', 'unterminated string');
      if (c === '"') break;
      if (c === '\\') {
        const e = text[i + 1];
        if (e === 'u' && /^[0-9a-fA-F]{4}$/.test(text.slice(i + 2, i + 6))) i += 6;
        else if (e !== undefined && '"\\/bfnrt'.includes(e)) i += 2;
        else {
          i++; // point at the character after the backslash
          fail('bad escape sequence in string');
        }
      } else if (c < ' ') fail('bad control character in string (escape it, e.g. \\n)');
      else i++;
    }
    i++;
  };
  const NUMBER = /-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?/y;
  const value = (depth = 1): void => {
    ws();
    const c = text[i];
    if (c === '{' || c === '[') {
      if (depth > MAX_JSON_DEPTH) fail(`nesting deeper than ${MAX_JSON_DEPTH} levels`);
      const close = c === '{' ? '}' : ']';
      i++;
      ws();
      if (text[i] === close) return void i++;
      for (;;) {
        ws();
        if (c === '{') {
          if (text[i] !== '"') fail('expected a double-quoted property name');
          str();
          ws();
          if (text[i] !== ':') fail("expected ':' after property name");
          i++;
        }
        value(depth + 1);
        ws();
        if (text[i] === ',') i++;
        else if (text[i] === close) return void i++;
        else fail(`expected ',' or '${close}' after ${c === '{' ? 'property value' : 'array element'}`);
      }
    }
    if (c === '"') return str();
    NUMBER.lastIndex = i;
    if (NUMBER.test(text)) return void (i = NUMBER.lastIndex);
    for (const lit of ['true', 'false', 'null']) if (text.startsWith(lit, i)) return void (i += lit.length);
    fail(`unexpected character ${JSON.stringify(String.fromCodePoint(text.codePointAt(i) ?? 0))}`);
  };
  try {
    value();
    ws();
    if (i < text.length) fail('unexpected non-whitespace character after the JSON value');
  } catch (e) {
    if (e instanceof Fail) return { offset: e.offset, reason: e.reason };
    throw e;
  }
  return { offset: text.length, reason: 'invalid JSON' }; // JSON.parse failed where the validator did not
}

/**
 * `JSON.parse(text)`, throwing PeftNodeError ERR_JSON "`file`: line L column C: reason" on invalid input.
 * `firstLine` shifts the reported line (a JSON Lines record on line N parses with `firstLine = N`).
 */
export function parseJson(text: string, file: string, firstLine = 1): unknown {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    const { offset, reason } = findJsonError(text);
    const { line, column } = lineColumn(text, offset);
    throw new PeftNodeError('ERR_JSON', `${file}: invalid JSON at line ${line + firstLine - 1} column ${column}: ${reason}`, {
      cause: err,
    });
  }
  const deep = typeof value === 'object' && value !== null ? nestingTooDeep(text) : -1;
  if (deep >= 0) {
    const { line, column } = lineColumn(text, deep);
    throw new PeftNodeError('ERR_JSON', `${file}: line ${line + firstLine - 1} column ${column}: nesting deeper than ${MAX_JSON_DEPTH} levels`);
  }
  return value;
}

/** Reads a UTF-8 file (a leading BOM is dropped), naming the path when it is missing or unreadable. */
export async function readTextFile(file: string): Promise<string> {
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch (err) {
    const code = (err as { code?: string }).code;
    if (code === 'ENOENT') throw new PeftNodeError('ERR_FILE_NOT_FOUND', `file not found: ${file}`, { cause: err });
    throw new PeftNodeError('ERR_IO', `cannot read ${file}: ${(err as Error).message}`, { cause: err });
  }
  return text.charCodeAt(0) === 0xfeff ? text.slice(1) : text;
}

/** Reads and parses a JSON file (errors: ERR_FILE_NOT_FOUND, ERR_IO, ERR_JSON with line and column). */
export async function readJsonFile(file: string): Promise<unknown> {
  return parseJson(await readTextFile(file), file);
}

/** True for `{...}` objects (not arrays, not null). */
export function isPlainObject(v: unknown): v is Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return false;
  const proto = Object.getPrototypeOf(v);
  // Compared by shape, not identity: JSON.parse in another realm (a jest vm context) has its own Object.prototype.
  return proto === null || Object.getPrototypeOf(proto) === null;
}
