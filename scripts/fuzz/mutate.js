'use strict';
/**
 * Deterministic mutators for the fuzzer: a seeded PRNG, byte-level edits, JSON-level edits (with raw number texts that
 * JSON.stringify cannot write: 1e400, NaN, 2^64, ...) and structure-aware safetensors edits. Everything here is a
 * pure function of (template, rng), so a case id and seed always give the same bytes.
 */

/** mulberry32: small, fast, good enough to pick mutations. */
function rng(seed) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const r = {
    next,
    /** Integer in [0, n). */
    int: (n) => Math.floor(next() * n),
    /** Integer in [lo, hi]. */
    range: (lo, hi) => lo + Math.floor(next() * (hi - lo + 1)),
    pick: (arr) => arr[Math.floor(next() * arr.length)],
    chance: (p) => next() < p,
    /** Picks by weight from [[weight, value], ...]. */
    weighted: (pairs) => {
      let total = 0;
      for (const [w] of pairs) total += w;
      let x = next() * total;
      for (const [w, v] of pairs) if ((x -= w) < 0) return v;
      return pairs[pairs.length - 1][1];
    },
    bytes: (n) => Buffer.from(Array.from({ length: n }, () => Math.floor(next() * 256))),
  };
  return r;
}

/** A 32-bit seed for case `id` of a run seeded `seed` (splitmix-style mixing). */
function caseSeed(seed, id) {
  let z = (Math.imul(seed >>> 0, 0x9e3779b1) + Math.imul(id + 1, 0x85ebca6b)) >>> 0;
  z = Math.imul(z ^ (z >>> 16), 0x7feb352d) >>> 0;
  z = Math.imul(z ^ (z >>> 15), 0x846ca68b) >>> 0;
  return (z ^ (z >>> 16)) >>> 0;
}

// ---------------------------------------------------------------------------------------------------------------
// Bytes

/** Invalid UTF-8 sequences: stray continuation, overlong, surrogate, truncated, out-of-range, 0xFF. */
const BAD_UTF8 = [
  [0x80], [0xbf], [0xc0, 0x80], [0xc1, 0xbf], [0xe0, 0x80, 0x80], [0xed, 0xa0, 0x80], [0xed, 0xbf, 0xbf],
  [0xf4, 0x90, 0x80, 0x80], [0xf8, 0x88, 0x80, 0x80, 0x80], [0xff], [0xfe], [0xe4, 0xbd], [0xf0, 0x9f, 0x98], [0xc3],
];

function mutateBytes(r, buf, { protect = 0 } = {}) {
  let b = Buffer.from(buf);
  const n = r.range(1, 3);
  for (let k = 0; k < n; k++) {
    const pos = () => protect + r.int(Math.max(1, b.length - protect + 1));
    const op = r.weighted([[3, 'truncate'], [4, 'flip'], [3, 'set'], [2, 'insert'], [2, 'delete'], [1, 'dup'], [3, 'utf8'], [1, 'zero']]);
    if (b.length === 0 && op !== 'insert' && op !== 'utf8') continue;
    if (op === 'truncate') b = b.subarray(0, pos());
    else if (op === 'flip') {
      const p = Math.min(pos(), b.length - 1);
      b[p] ^= 1 << r.int(8);
    } else if (op === 'set') {
      const p = Math.min(pos(), b.length - 1);
      b[p] = r.pick([0, 0xff, 0x7f, 0x80, 0x22, 0x5c, 0x7b, 0x7d, 0x5b, 0x5d, 0x2c, 0x3a, 0x20, 0x0a, r.int(256)]);
    } else if (op === 'insert') {
      const p = pos();
      b = Buffer.concat([b.subarray(0, p), r.bytes(r.range(1, 16)), b.subarray(p)]);
    } else if (op === 'delete') {
      const p = pos();
      b = Buffer.concat([b.subarray(0, p), b.subarray(Math.min(b.length, p + r.range(1, 64)))]);
    } else if (op === 'dup') {
      const p = pos();
      const len = r.range(1, 256);
      b = Buffer.concat([b.subarray(0, p), b.subarray(p, p + len), b.subarray(p)]);
    } else if (op === 'utf8') {
      const p = pos();
      b = Buffer.concat([b.subarray(0, p), Buffer.from(r.pick(BAD_UTF8)), b.subarray(p)]);
    } else if (op === 'zero') {
      const p = Math.min(pos(), b.length);
      b = Buffer.concat([b.subarray(0, p), Buffer.alloc(Math.min(b.length - p, r.range(1, 512))), b.subarray(Math.min(b.length, p + 512))]);
    }
  }
  return b;
}

// ---------------------------------------------------------------------------------------------------------------
// JSON

/** Number texts JSON.stringify cannot produce, or that sit on integer / float limits. */
const RAW_NUMBERS = [
  '1e400', '-1e400', 'NaN', 'Infinity', '-Infinity', '1e-400', '18446744073709551616', '18446744073709551615',
  '9223372036854775807', '9223372036854775808', '-9223372036854775808', '-9223372036854775809', '4294967296',
  '4294967295', '2147483648', '2147483647', '-2147483649', '9007199254740993', '1.0', '32.0', '3e1', '-0', '0.0',
  '1E2', '0.5', '1.5', '-1', '0', '1', '2', '3', '1e308', '1.7976931348623157e308', '5e-324',
  '123456789012345678901234567890', '1e9', '100000000', '65536',
];
const LONG = 'x'.repeat(100000);
const VALUES = [
  null, true, false, '', 'x', 'F32', 'bloom', 'float16', 'bfloat16', 'left', 'right', 'zero', 'CAUSAL_LM',
  'PREFIX_TUNING', 'LORA', [], {}, [[]], [null], { a: 1 }, [1, 2, 3], -100, -1, 0, 1, 7, 128, 1000, 65536, 'é',
  '\uFFFD', '\u0000', '\uD800', '<pad>', '</s>', LONG,
];

/** Walks a parsed JSON value; returns [path, value] for every node (paths are arrays of keys/indices). */
function jsonPaths(root, { skip } = {}) {
  const out = [];
  const walk = (v, p) => {
    out.push(p);
    if (skip && skip(p)) return;
    if (Array.isArray(v)) v.forEach((x, i) => walk(x, [...p, i]));
    else if (v && typeof v === 'object') for (const k of Object.keys(v)) walk(v[k], [...p, k]);
  };
  walk(root, []);
  return out;
}

function getAt(root, p) {
  let v = root;
  for (const k of p) v = v?.[k];
  return v;
}

function setAt(root, p, value) {
  if (p.length === 0) return value;
  const parent = getAt(root, p.slice(0, -1));
  if (parent && typeof parent === 'object') parent[p[p.length - 1]] = value;
  return root;
}

function deleteAt(root, p) {
  if (p.length === 0) return root;
  const parent = getAt(root, p.slice(0, -1));
  const k = p[p.length - 1];
  if (Array.isArray(parent)) parent.splice(k, 1);
  else if (parent && typeof parent === 'object') delete parent[k];
  return root;
}

/** A JSON document being mutated: a value plus raw number texts substituted at stringify time. */
class JsonDoc {
  constructor(value) {
    this.value = value;
    this.raws = [];
    this.textEdits = []; // functions text -> text applied after stringify
  }
  raw(text) {
    const marker = `@@RAW${this.raws.length}@@`;
    this.raws.push(text);
    return marker;
  }
  stringify(indent) {
    let text = JSON.stringify(this.value, null, indent);
    if (text === undefined) text = 'null';
    this.raws.forEach((raw, i) => (text = text.split(`"@@RAW${i}@@"`).join(raw)));
    for (const edit of this.textEdits) text = edit(text);
    return text;
  }
}

function interestingValue(r, doc, current) {
  const kind = r.weighted([[4, 'raw'], [4, 'value'], [2, 'near'], [1, 'deep'], [1, 'bigarray'], [1, 'type']]);
  if (kind === 'raw') return doc.raw(r.pick(RAW_NUMBERS));
  if (kind === 'value') return structuredClone(r.pick(VALUES));
  if (kind === 'near' && typeof current === 'number')
    return r.pick([current + 1, current - 1, current * 2, -current, current / 2, current * 1e6, 0]);
  if (kind === 'deep') {
    const depth = r.pick([10, 300, 1000, 5000, 100000]);
    return doc.raw('['.repeat(depth) + ']'.repeat(depth));
  }
  if (kind === 'bigarray') return doc.raw(`[${new Array(r.pick([1000, 100000])).fill(r.pick(['0', '1e400', '"a"', 'null'])).join(',')}]`);
  if (typeof current === 'number') return String(current);
  if (typeof current === 'string') return Number(current) || current.length;
  if (typeof current === 'boolean') return current ? 1 : 0;
  return structuredClone(r.pick(VALUES));
}

/**
 * Mutates a JSON document: values replaced (raw numbers, wrong types, deep nesting), keys deleted, renamed or
 * duplicated, arrays resized; `focus` (optional) lists paths to prefer.
 */
function mutateJson(r, value, opts = {}) {
  return mutateJsonDoc(r, new JsonDoc(structuredClone(value)), opts);
}

/** mutateJson on an existing JsonDoc (in place; returns it). */
function mutateJsonDoc(r, doc, { focus = [], skip, count } = {}) {
  const n = count ?? r.range(1, 3);
  for (let k = 0; k < n; k++) {
    const paths = jsonPaths(doc.value, { skip });
    const p = focus.length && r.chance(0.6) ? r.pick(focus) : r.pick(paths);
    const current = getAt(doc.value, p);
    const op = r.weighted([[8, 'replace'], [3, 'delete'], [1, 'rename'], [1, 'dupkey'], [1, 'add'], [1, 'wrap'], [1, 'empty']]);
    if (op === 'replace' || (p.length === 0 && op !== 'wrap' && op !== 'empty')) doc.value = setAt(doc.value, p, interestingValue(r, doc, current));
    else if (op === 'delete') doc.value = deleteAt(doc.value, p);
    else if (op === 'rename') {
      const parent = getAt(doc.value, p.slice(0, -1));
      const key = p[p.length - 1];
      if (parent && !Array.isArray(parent) && typeof parent === 'object') {
        const v = parent[key];
        delete parent[key];
        parent[r.pick([`${key}_`, key.toUpperCase?.() ?? 'X', '', '__proto__', 'constructor', 'toString', `${key} `])] = v;
      }
    } else if (op === 'dupkey') {
      // JSON.parse keeps the last duplicate, Python too; a parser keeping the first disagrees with them.
      const key = p[p.length - 1];
      if (typeof key === 'string') {
        const dup = JSON.stringify(interestingValue(r, doc, current)) ?? 'null';
        const needle = JSON.stringify(key) + ':';
        doc.textEdits.push((text) => {
          const i = text.indexOf(needle);
          return i < 0 ? text : text.slice(0, i) + `${needle}${dup},` + text.slice(i);
        });
      }
    } else if (op === 'add') {
      const parent = getAt(doc.value, p.slice(0, -1));
      if (Array.isArray(parent)) parent.push(interestingValue(r, doc, current));
      else if (parent && typeof parent === 'object') parent[r.pick(['extra', 'unknown_key', '__proto__', '__metadata__'])] = interestingValue(r, doc, current);
    } else if (op === 'wrap') doc.value = setAt(doc.value, p, [current]);
    else if (op === 'empty') doc.value = setAt(doc.value, p, Array.isArray(current) ? [] : typeof current === 'object' ? {} : '');
  }
  return doc;
}

/** JSON text (possibly from a mutated doc) → bytes, with optional text-level damage. */
function jsonBytes(r, doc, { textDamage = 0.25, indent } = {}) {
  let buf = Buffer.from(doc.stringify(indent), 'utf8');
  if (r.chance(textDamage)) buf = mutateBytes(r, buf);
  if (r.chance(0.03)) buf = Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), buf]); // BOM
  return buf;
}

// ---------------------------------------------------------------------------------------------------------------
// Safetensors

/** Splits a safetensors file into { header (parsed, key order kept), data }. */
function parseSafetensors(buf) {
  const n = Number(buf.readBigUInt64LE(0));
  return { header: JSON.parse(buf.subarray(8, 8 + n).toString('utf8')), data: buf.subarray(8 + n) };
}

const DTYPES = ['F32', 'F16', 'BF16', 'F64', 'I64', 'I32', 'I16', 'I8', 'U8', 'BOOL'];
const BAD_DTYPES = ['F8_E9M9', 'F8_E4M3', 'F8_E5M2', 'U16', 'U32', 'U64', 'C64', 'f32', 'F32 ', '', 'float32', 'F4'];
const BIG_DIMS = ['4294967296', '2147483648', '9223372036854775807', '9223372036854775808', '18446744073709551615',
  '18446744073709551616', '1e400', '-1', '1.5', '1e3', '"3"', 'null', '[2]', '1099511627776', '4611686018427387904'];

/**
 * Structure-aware safetensors mutation: header length field (beyond the file, above 100 MB, short, long), dtypes
 * (unknown, other sizes), shapes (overflowing, negative, non-integer, disagreeing with offsets), offsets (outside the
 * file, overlapping, reversed, negative, huge), entries removed/renamed/duplicated/not objects, __metadata__ of wrong
 * types, non-object headers, bad UTF-8 names, truncation and data damage (NaN/inf weights).
 */
const DTYPE_BYTES = { F64: 8, F32: 4, F16: 2, BF16: 2, I64: 8, I32: 4, I16: 2, I8: 1, U8: 1, BOOL: 1 };

/**
 * Consistent retyping: one or more tensors get another dtype (and bytes of the new size), or a reshape that keeps
 * numel; offsets are recomputed, so the file is valid and the loader's conversion and shape checks are what run.
 */
function retypeSafetensors(r, template) {
  const { header, data } = parseSafetensors(template);
  const names = Object.keys(header).filter((k) => k !== '__metadata__');
  const chosen = new Set(Array.from({ length: r.range(1, 3) }, () => r.pick(names)));
  const parts = [];
  const out = {};
  if (header.__metadata__) out.__metadata__ = header.__metadata__;
  let offset = 0;
  for (const n of names) {
    const e = header[n];
    let bytes = data.subarray(e.data_offsets[0], e.data_offsets[1]);
    let { dtype, shape } = e;
    if (chosen.has(n)) {
      const numel = shape.reduce((a, b) => a * b, 1);
      if (r.chance(0.7)) {
        dtype = r.pick(Object.keys(DTYPE_BYTES));
        const size = numel * DTYPE_BYTES[dtype];
        bytes = dtype === 'BOOL' ? Buffer.from(Array.from({ length: size }, () => r.int(2))) : r.chance(0.5) ? Buffer.alloc(size) : r.bytes(size);
      } else {
        shape = r.pick([[numel], [1, numel], [...shape].reverse(), [numel, 1], shape.length > 1 ? [shape[0] * shape[1], ...shape.slice(2)] : [1, ...shape]]);
      }
    }
    out[n] = { dtype, shape, data_offsets: [offset, offset + bytes.length] };
    parts.push(bytes);
    offset += bytes.length;
  }
  const json = JSON.stringify(out);
  const h = Buffer.from(json + ' '.repeat((8 - (Buffer.byteLength(json) % 8)) % 8));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(h.length));
  return Buffer.concat([len, h, ...parts]);
}

function mutateSafetensors(r, template) {
  if (r.chance(0.12)) return retypeSafetensors(r, template);
  const { header, data } = parseSafetensors(template);
  const doc = new JsonDoc(structuredClone(header));
  let body = Buffer.from(data);
  let lengthOverride = null; // bigint
  let truncateAt = null;
  let headerTextDamage = false;
  let headerPad = '';
  const names = () => Object.keys(doc.value && typeof doc.value === 'object' ? doc.value : {}).filter((k) => k !== '__metadata__');
  const entry = () => {
    const ns = names();
    const e = ns.length ? doc.value[r.pick(ns)] : null;
    return e !== null && typeof e === 'object' && !Array.isArray(e) ? e : null;
  };
  const n = r.range(1, 3);
  for (let k = 0; k < n; k++) {
    const op = r.weighted([
      [3, 'length'], [3, 'truncate'], [3, 'dtype'], [5, 'shape'], [5, 'offsets'], [2, 'entries'], [2, 'metadata'],
      [1, 'header-kind'], [2, 'names-utf8'], [3, 'data'], [1, 'pad'], [2, 'header-bytes'], [2, 'json'],
    ]);
    const e = entry();
    const isObj = doc.value !== null && typeof doc.value === 'object' && !Array.isArray(doc.value);
    if (!isObj && (op === 'entries' || op === 'metadata')) continue;
    if (op === 'length') {
      lengthOverride = r.pick(['zero', 'small', 'minus1', 'plus1', 'plus8', 'file+1', '100MB+1', '100MB', '2^63', 'max', 'rand']);
    } else if (op === 'truncate') {
      truncateAt = r.pick(['header-start', 'in-length', 'in-header', 'header-end', 'in-data', 'data-end-1']);
    } else if (op === 'dtype' && e) {
      e.dtype = r.chance(0.5) ? r.pick(BAD_DTYPES) : r.chance(0.8) ? r.pick(DTYPES) : interestingValue(r, doc, e.dtype);
    } else if (op === 'shape' && e) {
      const s = Array.isArray(e.shape) ? [...e.shape] : [];
      const how = r.pick(['drop', 'add', 'double', 'swap', 'big', 'big2', 'zero', 'neg', 'scalar', 'notarray', 'rawdim', 'overflow']);
      if (how === 'drop') s.pop();
      else if (how === 'add') s.push(r.pick([1, 2, 0]));
      else if (how === 'double' && s.length) s[r.int(s.length)] *= 2;
      else if (how === 'swap') s.reverse();
      else if (how === 'big') s[0] = 2 ** 31;
      else if (how === 'big2') s.splice(0, s.length, 2 ** 40, 2 ** 40);
      else if (how === 'zero') s[r.int(Math.max(1, s.length))] = 0;
      else if (how === 'neg') s[r.int(Math.max(1, s.length))] = -s[0] || -1;
      else if (how === 'scalar') s.length = 0;
      if (how === 'notarray') e.shape = interestingValue(r, doc, e.shape);
      else if (how === 'rawdim') {
        s[r.int(Math.max(1, s.length))] = doc.raw(r.pick(BIG_DIMS));
        e.shape = s;
      } else if (how === 'overflow') {
        // Product wraps to the real byte count modulo 2^64: [2^62, 4 * numel / 2^62 ...] style.
        e.shape = [doc.raw('4611686018427387904'), doc.raw('4'), ...s];
      } else e.shape = s;
    } else if (op === 'offsets' && e && Array.isArray(e.data_offsets)) {
      const [b, en] = e.data_offsets;
      const others = names().map((nm) => doc.value[nm]).filter((x) => x && x !== e && Array.isArray(x.data_offsets));
      const how = r.pick(['shift', 'swap', 'beyond', 'overlap', 'same', 'neg', 'huge', 'empty', 'len1', 'len3', 'float', 'raw', 'short', 'long']);
      if (how === 'shift') e.data_offsets = [b + r.pick([1, 2, 4, -4, 8]), en + r.pick([1, 2, 4, -4, 8])];
      else if (how === 'swap') e.data_offsets = [en, b];
      else if (how === 'beyond') e.data_offsets = [b + body.length, en + body.length];
      else if (how === 'overlap' && others.length) {
        const o = r.pick(others);
        const d = en - b;
        e.data_offsets = [o.data_offsets[0] + 4, o.data_offsets[0] + 4 + d];
      } else if (how === 'same' && others.length) {
        const o = r.pick(others);
        e.data_offsets = [...o.data_offsets];
      } else if (how === 'neg') e.data_offsets = [-(en - b), 0];
      else if (how === 'huge') e.data_offsets = [doc.raw(r.pick(['18446744073709551615', '9223372036854775807', '1e400'])), doc.raw('18446744073709551615')];
      else if (how === 'empty') e.data_offsets = [];
      else if (how === 'len1') e.data_offsets = [b];
      else if (how === 'len3') e.data_offsets = [b, en, en];
      else if (how === 'float') e.data_offsets = [b + 0.5, en + 0.5];
      else if (how === 'raw') e.data_offsets = [doc.raw(r.pick(RAW_NUMBERS)), en];
      else if (how === 'short') e.data_offsets = [b, en - r.pick([1, 2, 4])];
      else if (how === 'long') e.data_offsets = [b, en + r.pick([1, 2, 4])];
    } else if (op === 'entries') {
      const ns = names();
      const how = r.pick(['delete', 'rename', 'dup', 'extra', 'notobject', 'missing-field', 'extra-field']);
      const nm = ns.length ? r.pick(ns) : 'x';
      if (how === 'delete') delete doc.value[nm];
      else if (how === 'rename') {
        doc.value[r.pick([nm + '_', nm.replace('transformer.', ''), 'lm_head.weight', 'prompt_embeddings', '', nm.toUpperCase()])] = doc.value[nm];
        delete doc.value[nm];
      } else if (how === 'dup') {
        const dupText = JSON.stringify(doc.value[nm]);
        doc.textEdits.push((text) => text.replace('{', `{${JSON.stringify(nm)}:${dupText},`));
      } else if (how === 'extra') doc.value[r.pick(['extra', 'transformer.h.99.x', 'prompt_embeddings'])] = { dtype: r.pick(DTYPES), shape: [2], data_offsets: [0, 8] };
      else if (how === 'notobject') doc.value[nm] = interestingValue(r, doc, null);
      else if (how === 'missing-field' && doc.value[nm] && typeof doc.value[nm] === 'object') delete doc.value[nm][r.pick(['dtype', 'shape', 'data_offsets'])];
      else if (how === 'extra-field' && doc.value[nm] && typeof doc.value[nm] === 'object') doc.value[nm][r.pick(['extra', 'dtype2', '__proto__'])] = 1;
    } else if (op === 'metadata') {
      doc.value.__metadata__ = r.pick([null, 1, 'x', [], { format: 1 }, { format: null }, { a: { b: 1 } }, { format: 'pt', 'step.embedding.weight': r.pick(['x', '-1', 'NaN', '1e400', '', '1.5']) }, { format: 'pt' }]);
    } else if (op === 'header-kind') {
      doc.value = r.pick([[], null, 1, 'x', {}, [{}], true]);
    } else if (op === 'names-utf8') {
      const ns = names();
      if (ns.length) {
        const nm = r.pick(ns);
        const bad = Buffer.from(r.pick(BAD_UTF8)).toString('latin1');
        doc.textEdits.push((text) => text.replace(JSON.stringify(nm), JSON.stringify(nm).slice(0, -1) + `@@BYTES${bad}@@"`));
      }
    } else if (op === 'data') {
      if (body.length) {
        const how = r.pick(['nan', 'inf', 'random', 'zero']);
        const count = r.range(1, 64);
        for (let i = 0; i < count; i++) {
          const p = r.int(Math.max(1, body.length - 4)) & ~3;
          if (how === 'nan') body.writeUInt32LE(0x7fc00000, p);
          else if (how === 'inf') body.writeUInt32LE(r.chance(0.5) ? 0x7f800000 : 0xff800000, p);
          else if (how === 'random') body.writeUInt32LE(r.int(2 ** 32), p);
          else body.writeUInt32LE(0, p);
        }
      }
    } else if (op === 'pad') {
      headerPad = r.pick(['        ', '\u0000\u0000\u0000\u0000', 'xxxx', '\n\n', '}', ' ]']);
    } else if (op === 'header-bytes') {
      headerTextDamage = true;
    } else if (op === 'json') {
      mutateJsonDoc(r, doc, { count: 1 });
    }
  }
  let headerText = doc.stringify() + headerPad;
  // @@BYTES...@@ carries latin1-encoded raw bytes (bad UTF-8) into the header.
  let headerBuf;
  const parts = headerText.split(/@@BYTES([\s\S]*?)@@/);
  headerBuf = Buffer.concat(parts.map((part, i) => (i % 2 ? Buffer.from(part, 'latin1') : Buffer.from(part, 'utf8'))));
  if (headerTextDamage) headerBuf = mutateBytes(r, headerBuf);
  let len = BigInt(headerBuf.length);
  const fileLen = BigInt(8 + headerBuf.length + body.length);
  if (lengthOverride) {
    len = {
      zero: 0n, small: 2n, minus1: len - 1n, plus1: len + 1n, plus8: len + 8n, 'file+1': fileLen - 7n,
      '100MB+1': (100n << 20n) + 1n, '100MB': 100n << 20n, '2^63': 1n << 63n, max: (1n << 64n) - 1n,
      rand: BigInt(r.int(2 ** 32)) * BigInt(r.int(2 ** 32) + 1),
    }[lengthOverride];
    if (len < 0n) len = 0n;
    len &= (1n << 64n) - 1n;
  }
  const lenBuf = Buffer.alloc(8);
  lenBuf.writeBigUInt64LE(len);
  let out = Buffer.concat([lenBuf, headerBuf, body]);
  if (truncateAt) {
    const hl = 8 + headerBuf.length;
    const at = {
      'header-start': 0, 'in-length': r.range(1, 7), 'in-header': 8 + r.int(Math.max(1, headerBuf.length)),
      'header-end': hl, 'in-data': hl + r.int(Math.max(1, body.length)), 'data-end-1': out.length - 1,
    }[truncateAt];
    out = out.subarray(0, Math.max(0, at));
  }
  return out;
}


// ---------------------------------------------------------------------------------------------------------------
// pytorch_model.bin: zip (stored entries) + pickle

const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});
function crc32(buf) {
  let c = 0xffffffff;
  for (let i = 0; i < buf.length; i++) c = CRC_TABLE[(c ^ buf[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/** Entries of a (non-zip64) zip through its central directory: [{ name, data, method }]. */
function parseZip(buf) {
  let eocd = -1;
  for (let i = buf.length - 22; i >= Math.max(0, buf.length - 65557); i--)
    if (buf.readUInt32LE(i) === 0x06054b50) {
      eocd = i;
      break;
    }
  if (eocd < 0) throw new Error('fuzz: template is not a zip');
  const count = buf.readUInt16LE(eocd + 10);
  let p = buf.readUInt32LE(eocd + 16);
  const entries = [];
  for (let k = 0; k < count; k++) {
    const method = buf.readUInt16LE(p + 10);
    const csize = buf.readUInt32LE(p + 20);
    const nlen = buf.readUInt16LE(p + 28), xlen = buf.readUInt16LE(p + 30), clen = buf.readUInt16LE(p + 32);
    const local = buf.readUInt32LE(p + 42);
    const name = buf.subarray(p + 46, p + 46 + nlen).toString('latin1');
    const start = local + 30 + buf.readUInt16LE(local + 26) + buf.readUInt16LE(local + 28);
    entries.push({ name, method, data: Buffer.from(buf.subarray(start, start + csize)) });
    p += 46 + nlen + xlen + clen;
  }
  return entries;
}

/** A zip of stored entries, as torch.save lays them out (optionally 64-byte aligned data, like torch's writer). */
function writeZip(entries, { align = 64 } = {}) {
  const parts = [];
  const central = [];
  let offset = 0;
  for (const e of entries) {
    const name = Buffer.from(e.name, 'latin1');
    let extra = Buffer.alloc(0);
    const headerLen = 30 + name.length;
    if (align > 1) {
      const pad = (align - ((offset + headerLen + 4) % align)) % align;
      extra = Buffer.alloc(4 + pad);
      extra.writeUInt16LE(0x4246, 0); // 'FB': torch's padding field
      extra.writeUInt16LE(pad, 2);
    }
    const crc = e.crc ?? crc32(e.data);
    const h = Buffer.alloc(30);
    h.writeUInt32LE(0x04034b50, 0);
    h.writeUInt16LE(20, 4);
    h.writeUInt16LE(e.flags ?? 0, 6);
    h.writeUInt16LE(e.method ?? 0, 8);
    h.writeUInt32LE(crc, 14);
    h.writeUInt32LE(e.csize ?? e.data.length, 18);
    h.writeUInt32LE(e.usize ?? e.data.length, 22);
    h.writeUInt16LE(name.length, 26);
    h.writeUInt16LE(extra.length, 28);
    parts.push(h, name, extra, e.data);
    const c = Buffer.alloc(46);
    c.writeUInt32LE(0x02014b50, 0);
    c.writeUInt16LE(20, 4);
    c.writeUInt16LE(20, 6);
    c.writeUInt16LE(e.flags ?? 0, 8);
    c.writeUInt16LE(e.method ?? 0, 10);
    c.writeUInt32LE(crc, 16);
    c.writeUInt32LE(e.csize ?? e.data.length, 20);
    c.writeUInt32LE(e.usize ?? e.data.length, 24);
    c.writeUInt16LE(name.length, 28);
    c.writeUInt32LE(e.localOffset ?? offset, 42);
    central.push(c, name);
    offset += 30 + name.length + extra.length + e.data.length;
  }
  const cd = Buffer.concat(central);
  const end = Buffer.alloc(22);
  end.writeUInt32LE(0x06054b50, 0);
  end.writeUInt16LE(entries.length, 8);
  end.writeUInt16LE(entries.length, 10);
  end.writeUInt32LE(cd.length, 12);
  end.writeUInt32LE(offset, 16);
  return Buffer.concat([...parts, cd, end]);
}

// Pickle opcodes → operand layout: [fixed operand bytes] or a length-prefixed / newline form.
const PICKLE_FIXED = { 0x80: 1, 0x95: 8, 0x71: 1, 0x72: 4, 0x68: 1, 0x6a: 4, 0x4a: 4, 0x4b: 1, 0x4d: 2, 0x47: 8 };
const PICKLE_LEN = { 0x8a: 1, 0x8b: 4, 0x58: 4, 0x8c: 1, 0x8d: 8, 0x54: 4, 0x55: 1, 0x42: 4, 0x43: 1, 0x8e: 8 };
const PICKLE_LINES = { 0x63: 2, 0x69: 2, 0x50: 1, 0x49: 1, 0x4c: 1, 0x46: 1, 0x53: 1, 0x56: 1 };

/** Operand sites of a pickle: [{ op, at, kind: 'int'|'len', size }], walking opcodes until STOP. */
function pickleSites(pkl) {
  const sites = [];
  try {
    walkPickle(pkl, sites);
  } catch {
    // a damaged pickle: the sites found so far
  }
  return sites.filter((x) => x.at + x.size <= pkl.length);
}

function walkPickle(pkl, sites) {
  let i = 0;
  while (i < pkl.length) {
    const op = pkl[i++];
    if (op === 0x2e) break; // STOP
    if (op in PICKLE_FIXED) {
      sites.push({ op, at: i, kind: 'int', size: PICKLE_FIXED[op] });
      i += PICKLE_FIXED[op];
    } else if (op in PICKLE_LEN) {
      const size = PICKLE_LEN[op];
      sites.push({ op, at: i, kind: 'len', size });
      const n = size === 1 ? pkl[i] : size === 4 ? pkl.readUInt32LE(i) : Number(pkl.readBigUInt64LE(i));
      i += size + n;
    } else if (op in PICKLE_LINES) {
      for (let k = 0; k < PICKLE_LINES[op]; k++) {
        const nl = pkl.indexOf(0x0a, i);
        if (nl < 0) return;
        sites.push({ op, at: i, kind: 'line', size: nl - i });
        i = nl + 1;
      }
    }
  }
}

const INTS = [0, 1, -1, 2, 3, 7, 31, 32, 33, 64, 127, 128, 255, 256, 65535, 65536, 2 ** 31 - 1, -(2 ** 31), 2 ** 24, 1000000, -2];

function writeIntOperand(r, pkl, site) {
  const v = r.chance(0.8) ? r.pick(INTS) : r.int(2 ** 32) - 2 ** 31;
  if (site.size === 1) pkl[site.at] = v & 0xff;
  else if (site.size === 2) pkl.writeUInt16LE(v & 0xffff, site.at);
  else if (site.size === 4) pkl.writeInt32LE(Math.max(-(2 ** 31), Math.min(2 ** 31 - 1, v)), site.at);
  else pkl.writeBigInt64LE(BigInt(v) * BigInt(r.pick([1, 1, 2 ** 20, 2 ** 30])), site.at);
}

function writeLenOperand(r, pkl, site) {
  const cur = site.size === 1 ? pkl[site.at] : site.size === 4 ? pkl.readUInt32LE(site.at) : Number(pkl.readBigUInt64LE(site.at));
  const v = r.pick([0, cur + 1, cur - 1, cur + 4, pkl.length, 0xff, 0xffffffff, 0x7fffffff]);
  if (site.size === 1) pkl[site.at] = Math.max(0, v) & 0xff;
  else if (site.size === 4) pkl.writeUInt32LE(Math.max(0, Math.min(0xffffffff, v)), site.at);
  else pkl.writeBigUInt64LE(r.chance(0.5) ? BigInt(Math.max(0, v)) : 0xffffffffffffffffn, site.at);
}

/**
 * pytorch_model.bin mutations: the pickle (int operands: sizes, strides, offsets, storage numels, memo indices;
 * length prefixes; opcode bytes; globals; truncation) with the zip rebuilt and CRCs right so the pickle parser is
 * reached; storages shortened, lengthened, renamed or dropped; zip fields (sizes, offsets, method, flags, CRC,
 * names) damaged in place; raw byte damage.
 */
function mutateTorchZip(r, template) {
  const how = r.weighted([[5, 'pickle'], [2, 'storage'], [2, 'zipfield'], [2, 'bytes']]);
  if (how === 'bytes') return mutateBytes(r, template);
  const entries = parseZip(template);
  const pklEntry = entries.find((e) => e.name.endsWith('/data.pkl'));
  const opts = { align: r.chance(0.8) ? 64 : 1 };
  if (how === 'pickle' && pklEntry) {
    let pkl = Buffer.from(pklEntry.data);
    const n = r.range(1, 3);
    for (let k = 0; k < n; k++) {
      const sites = pickleSites(pkl);
      const what = r.weighted([[6, 'int'], [2, 'len'], [2, 'opcode'], [1, 'global'], [1, 'truncate'], [2, 'bytes']]);
      const ints = sites.filter((x) => x.kind === 'int');
      const lens = sites.filter((x) => x.kind === 'len');
      const lines = sites.filter((x) => x.kind === 'line');
      if (what === 'int' && ints.length) writeIntOperand(r, pkl, r.pick(ints));
      else if (what === 'len' && lens.length) writeLenOperand(r, pkl, r.pick(lens));
      else if (what === 'opcode' && sites.length) {
        const at = Math.max(0, r.pick(sites).at - 1);
        pkl[at] = r.pick([0x2e, 0x28, 0x29, 0x5d, 0x7d, 0x74, 0x52, 0x62, 0x73, 0x75, 0x65, 0x61, 0x4e, 0x30, 0x31, 0x32, 0x94, 0x93, 0x85, 0x86, 0x87, 0x81, 0x51, 0x6f, 0x69, 0x00, 0xff, 0x88]);
      } else if (what === 'global' && lines.length) {
        const site = r.pick(lines);
        const repl = Buffer.from(r.pick(['torch', 'collections', 'torch._utils', 'FloatStorage', 'HalfStorage', 'ByteStorage', 'LongStorage', 'BoolStorage',
          '_rebuild_tensor_v2', '_rebuild_parameter', 'OrderedDict', 'os', 'system', 'builtins', 'eval', 'x'.repeat(300), '']), 'latin1');
        pkl = Buffer.concat([pkl.subarray(0, site.at), repl, pkl.subarray(site.at + site.size)]);
      } else if (what === 'truncate') pkl = pkl.subarray(0, r.int(pkl.length));
      else pkl = mutateBytes(r, pkl, { protect: 2 });
    }
    pklEntry.data = pkl;
    return writeZip(entries, opts);
  }
  if (how === 'storage') {
    const storages = entries.filter((e) => /\/data\/\d+$/.test(e.name));
    if (storages.length) {
      const e = r.pick(storages);
      const op = r.pick(['shorten', 'lengthen', 'empty', 'rename', 'drop', 'dup']);
      if (op === 'shorten') e.data = e.data.subarray(0, Math.max(0, e.data.length - r.pick([1, 2, 4, 8, e.data.length])));
      else if (op === 'lengthen') e.data = Buffer.concat([e.data, r.bytes(r.pick([1, 3, 4, 64]))]);
      else if (op === 'empty') e.data = Buffer.alloc(0);
      else if (op === 'rename') e.name = e.name.replace(/\d+$/, r.pick(['99', '-1', 'x', '00', '']));
      else if (op === 'drop') entries.splice(entries.indexOf(e), 1);
      else entries.push({ ...e });
    }
    return writeZip(entries, opts);
  }
  // zipfield: damage one header field without rebuilding.
  const e = r.pick(entries);
  const field = r.pick(['csize', 'usize', 'crc', 'method', 'flags', 'localOffset']);
  if (field === 'csize' || field === 'usize') e[field] = r.pick([0, e.data.length + 1, e.data.length - 1, 0xffffffff, 0xfffffffe]) >>> 0;
  else if (field === 'crc') e.crc = (crc32(e.data) ^ 1) >>> 0;
  else if (field === 'method') e.method = r.pick([8, 12, 14, 99]);
  else if (field === 'flags') e.flags = r.pick([1, 8, 0x41, 0x800]);
  else e.localOffset = r.pick([0xffffffff, 1, template.length]);
  return writeZip(entries, opts);
}

module.exports = { parseZip, writeZip, crc32, pickleSites, mutateTorchZip, rng, caseSeed, mutateBytes, mutateJson, mutateJsonDoc, jsonBytes, jsonPaths, mutateSafetensors, parseSafetensors, JsonDoc, BAD_UTF8, RAW_NUMBERS };
