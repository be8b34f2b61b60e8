/**
 * `PreTrainedTokenizer`: transformers' fast-tokenizer API (`tokenizer(text)`, `decode`, `pad`, special tokens,
 * `save_pretrained`) over `@huggingface/tokenizers`, which runs `tokenizer.json` (normalizer, pre-tokenizer, BPE,
 * post-processor, decoder). Padding, truncation and special-token bookkeeping follow transformers 5.17
 * (`tokenization_utils_base.py`, `TokenizersBackend`); test/tokenizer.test.ts checks them against Python.
 */
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { Tokenizer } from '@huggingface/tokenizers';
import { PeftNodeError, repr } from '../errors';
import { Tensor, typedArrayKind } from '../tensor';
import { Callable } from './callable';

/** `padding`: `true` / `'longest'` pads to the longest sequence, `'max_length'` to `max_length`, `false` not at all. */
export type PaddingStrategy = boolean | 'longest' | 'max_length' | 'do_not_pad';
/** `truncation`: `true` (= `'longest_first'`, `'only_first'`: the same for single texts) cuts to `max_length`. */
export type TruncationStrategy = boolean | 'longest_first' | 'only_first' | 'do_not_truncate';
/** Which end padding (or truncation) applies to. */
export type Side = 'left' | 'right';

/** Options of a tokenizer call, `tokenizer(text, options)`. */
export interface TokenizerCallOptions {
  /** Let the post-processor add special tokens (BLOOM's adds none). Default true. */
  add_special_tokens?: boolean;
  /** Default false. Padding uses `pad_token_id` and the tokenizer's `padding_side`. */
  padding?: PaddingStrategy;
  /**
   * Default: off — except that, as in transformers, giving `max_length` without `padding` turns truncation on.
   * Without `max_length`, truncation cuts to `model_max_length`.
   */
  truncation?: TruncationStrategy;
  /** Length to truncate to and/or pad to (with `padding: 'max_length'`). */
  max_length?: number | null;
  /** Round padded lengths up to a multiple of this. */
  pad_to_multiple_of?: number | null;
  /** Overrides the tokenizer's `padding_side` for this call. */
  padding_side?: Side;
  /** `'pt'`: int64 {@link Tensor}s of shape [batch, seq_len] (a single text gives batch 1); else number arrays. */
  return_tensors?: 'pt' | null;
}

/** Options of {@link PreTrainedTokenizer.decode}. */
export interface DecodeOptions {
  /** Drop special tokens (`<s>`, `</s>`, `<pad>`, ...). Default false. */
  skip_special_tokens?: boolean;
  /** Undo spaces before punctuation (" ." → "."); default from tokenizer_config.json, else false (transformers 5). */
  clean_up_tokenization_spaces?: boolean;
}

/** Options of {@link PreTrainedTokenizer.pad}. */
export interface PadOptions {
  /** Default true (pad to the longest). */
  padding?: PaddingStrategy;
  /** Target length for `padding: 'max_length'` (default `model_max_length`). */
  max_length?: number | null;
  /** Round padded lengths up to a multiple of this. */
  pad_to_multiple_of?: number | null;
  /** Overrides the tokenizer's `padding_side`. */
  padding_side?: Side;
  /** `'pt'`: int64 {@link Tensor}s; else number arrays. */
  return_tensors?: 'pt' | null;
}

/** What a tokenizer call returns: token ids and the attention mask (1 = token, 0 = padding). */
export interface BatchEncoding<T> {
  input_ids: T;
  attention_mask: T;
}

/** One tokenized example as `pad` and the collators take it (other keys pass through unpadded). */
export interface EncodedExample {
  input_ids: number[];
  attention_mask?: number[];
  [key: string]: unknown;
}

/** Padded features: `input_ids`, `attention_mask`, and any other keys that were passed in. */
export type PaddedBatch<T> = BatchEncoding<T> & { [key: string]: T };

/** Keys of the special tokens, in transformers' `SPECIAL_TOKENS_ATTRIBUTES` order. */
export const SPECIAL_TOKEN_KEYS = ['bos_token', 'eos_token', 'unk_token', 'sep_token', 'pad_token', 'cls_token', 'mask_token'] as const;
type SpecialTokenKey = (typeof SPECIAL_TOKEN_KEYS)[number];

/** transformers' VERY_LARGE_INTEGER: the `model_max_length` of a tokenizer that sets none. */
export const VERY_LARGE_INTEGER = 1e30;
const LARGE_INTEGER = 1e20;

/** Keys `pad` pads (transformers' `_pad`); other keys pass through. */
const PADDED_KEYS = ['input_ids', 'attention_mask', 'token_type_ids', 'special_tokens_mask'];

/** A special token as configs spell it: a string, or an AddedToken object `{ content, ... }`. */
function tokenContent(v: unknown): string | null {
  if (typeof v === 'string') return v;
  if (v && typeof v === 'object' && typeof (v as { content?: unknown }).content === 'string') return (v as { content: string }).content;
  return null;
}

/** Integer ids from arrays, typed arrays or a 1-D (or [1, T]) int Tensor; negative or fractional ids are errors. */
function idList(ids: ArrayLike<number | bigint> | Tensor | number, what: string): number[] {
  let values: ArrayLike<number | bigint>;
  if (typeof ids !== 'number' && typeof ids !== 'bigint' && !(ids instanceof Tensor) && !Array.isArray(ids) && !ArrayBuffer.isView(ids))
    throw new PeftNodeError('ERR_INVALID_INPUT', `${what}: expected token ids (an array, a typed array or a Tensor), got ${repr(ids)}`);
  if (typeof ids === 'number' || typeof ids === 'bigint') values = [ids];
  else if (ids instanceof Tensor) {
    if (ids.dims.length > 2 || (ids.dims.length === 2 && ids.dims[0] !== 1))
      throw new PeftNodeError('ERR_INVALID_INPUT', `${what}: expected one sequence of ids, got a tensor of dims [${ids.dims}]`);
    values = ids.data as ArrayLike<number | bigint>;
  } else values = ids;
  return Array.from(values, (v) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 0)
      throw new PeftNodeError('ERR_INVALID_INPUT', `${what}: token ids must be non-negative integers, got ${String(v)}` +
        (n === -100 ? ' (label padding: drop ids < 0 first)' : ''));
    return n;
  });
}

/** Rows of a 2-D int Tensor or nested arrays. */
function idRows(seqs: ArrayLike<number | bigint>[] | Tensor): ArrayLike<number | bigint>[] {
  if (!(seqs instanceof Tensor)) return seqs;
  if (seqs.dims.length !== 2)
    throw new PeftNodeError('ERR_INVALID_INPUT', `batch_decode: expected a [batch, seq_len] tensor, got dims [${seqs.dims}]`);
  const [b, t] = seqs.dims;
  const data = seqs.data as BigInt64Array | Int32Array | Float32Array | Float64Array;
  return Array.from({ length: b }, (_, i) => data.subarray(i * t, (i + 1) * t));
}

/** int64 Tensor from rows of ids; ragged rows get transformers' advice instead of a shape error. */
function toTensor(rows: number[][] | number[], key: string): Tensor {
  if (Array.isArray(rows[0])) {
    const lens = new Set((rows as number[][]).map((r) => r.length));
    if (lens.size > 1)
      throw new PeftNodeError(
        'ERR_INVALID_INPUT',
        `Unable to create tensor for '${key}': sequences have different lengths (${[...lens].join(', ')}); ` +
          'activate padding (padding: true) and/or truncation to get a rectangular batch',
      );
  }
  for (const v of (rows as unknown[]).flat())
    if (!Number.isInteger(v))
      throw new PeftNodeError('ERR_INVALID_INPUT', `Unable to create an int64 tensor for '${key}': found ${repr(v)}`);
  if (rows.length === 0) return new Tensor('int64', new BigInt64Array(0), [0, 0]);
  return Tensor.from(rows, 'int64');
}

/** A tokenizer as `AutoTokenizer.from_pretrained` returns it. Call it like a function: `tokenizer(text, options)`. */
export interface PreTrainedTokenizer {
  /** One text → `{ input_ids: number[], attention_mask: number[] }`. */
  (text: string, options?: TokenizerCallOptions & { return_tensors?: null }): BatchEncoding<number[]>;
  /** A batch of texts → `number[][]` per key. */
  (text: string[], options?: TokenizerCallOptions & { return_tensors?: null }): BatchEncoding<number[][]>;
  /** With `return_tensors: 'pt'` → int64 Tensors [batch, seq_len]. */
  (text: string | string[], options: TokenizerCallOptions & { return_tensors: 'pt' }): BatchEncoding<Tensor>;
}

/** transformers' fast tokenizer over `tokenizer.json`. Create it with `AutoTokenizer.from_pretrained(dir)`. */
export class PreTrainedTokenizer extends Callable {
  /** The `@huggingface/tokenizers` pipeline doing the actual work. */
  readonly backend: Tokenizer;
  /** Where it was loaded from. */
  readonly name_or_path: string;
  /** Side that padding goes to: tokenizer_config.json's `padding_side`, default "right" (BLOOM repos: "left"). */
  padding_side: Side;
  /** Side that truncation cuts from. Default "right". */
  truncation_side: Side;
  /** Longest input the model takes (tokenizer_config.json), used by `truncation` / `'max_length'` without a length. */
  model_max_length: number;
  /** Default of {@link DecodeOptions.clean_up_tokenization_spaces}. */
  clean_up_tokenization_spaces: boolean;
  /** Beginning-of-sequence token, or null. */
  bos_token: string | null = null;
  /** End-of-sequence token (BLOOM: `</s>`), or null. */
  eos_token: string | null = null;
  /** Unknown token, or null. */
  unk_token: string | null = null;
  /** Separator token, or null. */
  sep_token: string | null = null;
  /** Padding token (BLOOM: `<pad>`), or null; set it (e.g. to `eos_token`) to allow padding. */
  pad_token: string | null = null;
  /** Classifier token, or null. */
  cls_token: string | null = null;
  /** Mask token, or null. */
  mask_token: string | null = null;
  /** Further special tokens (`additional_special_tokens` / `extra_special_tokens`). */
  additional_special_tokens: string[];
  private readonly tokenizerJson: string;
  private readonly initConfig: Record<string, unknown>;
  private readonly baseVocabSize: number;

  /**
   * @param tokenizer_json The text of tokenizer.json (kept verbatim for `save_pretrained`).
   * @param config tokenizer_config.json merged with special_tokens_map.json (and loading options).
   * @param name_or_path Where it came from.
   */
  constructor(tokenizer_json: string, config: Record<string, unknown> = {}, name_or_path = '') {
    super();
    const json = JSON.parse(tokenizer_json) as { model?: { vocab?: object } };
    this.tokenizerJson = tokenizer_json;
    this.initConfig = { ...config };
    this.name_or_path = name_or_path;
    for (const key of SPECIAL_TOKEN_KEYS) this[key] = tokenContent(config[key]);
    const extra = config.additional_special_tokens ?? config.extra_special_tokens;
    this.additional_special_tokens = Array.isArray(extra) ? extra.map(tokenContent).filter((t): t is string => t !== null) : [];
    this.padding_side = this.side(config.padding_side, 'padding_side');
    this.truncation_side = this.side(config.truncation_side, 'truncation_side');
    this.model_max_length = typeof config.model_max_length === 'number' ? config.model_max_length : VERY_LARGE_INTEGER;
    this.clean_up_tokenization_spaces = config.clean_up_tokenization_spaces === true;
    // tokenizers.js defaults clean_up_tokenization_spaces to true; transformers 5 to false — always pass ours.
    this.backend = new Tokenizer(json, {
      ...config,
      clean_up_tokenization_spaces: this.clean_up_tokenization_spaces,
      additional_special_tokens: this.additional_special_tokens,
    });
    this.baseVocabSize = Object.keys(json.model?.vocab ?? {}).length;
  }

  private side(v: unknown, name: string): Side {
    if (v === undefined || v === null) return 'right';
    if (v === 'left' || v === 'right') return v;
    throw new PeftNodeError('ERR_CONFIG', `${name} must be "left" or "right", got ${repr(v)}`);
  }

  private specialId(key: SpecialTokenKey): number | null {
    const t = this[key];
    return t === null ? null : this.convert_tokens_to_ids(t);
  }

  /** Id of `bos_token`, or null. */
  get bos_token_id(): number | null {
    return this.specialId('bos_token');
  }
  /** Id of `eos_token`, or null. */
  get eos_token_id(): number | null {
    return this.specialId('eos_token');
  }
  /** Id of `unk_token`, or null. */
  get unk_token_id(): number | null {
    return this.specialId('unk_token');
  }
  /** Id of `sep_token`, or null. */
  get sep_token_id(): number | null {
    return this.specialId('sep_token');
  }
  /** Id of `pad_token`, or null. */
  get pad_token_id(): number | null {
    return this.specialId('pad_token');
  }
  /** Id of `cls_token`, or null. */
  get cls_token_id(): number | null {
    return this.specialId('cls_token');
  }
  /** Id of `mask_token`, or null. */
  get mask_token_id(): number | null {
    return this.specialId('mask_token');
  }

  /** The set special tokens, in transformers' order (bos, eos, unk, sep, pad, cls, mask, then the others). */
  get all_special_tokens(): string[] {
    const all = [...SPECIAL_TOKEN_KEYS.map((k) => this[k]), ...this.additional_special_tokens];
    return [...new Set(all.filter((t): t is string => t !== null))];
  }

  /** Ids of {@link all_special_tokens}. */
  get all_special_ids(): number[] {
    return this.all_special_tokens.map((t) => this.convert_tokens_to_ids(t)).filter((id): id is number => id !== null);
  }

  /** Size of the base vocabulary (without added tokens), as `tokenizer.vocab_size`. */
  get vocab_size(): number {
    return this.baseVocabSize;
  }

  /** Tokenizes text(s) → `{ input_ids, attention_mask }`; see {@link TokenizerCallOptions}. */
  __call__(text: string | string[], options: TokenizerCallOptions = {}): BatchEncoding<number[] | number[][] | Tensor> {
    options = options ?? {};
    const batched = Array.isArray(text);
    const texts: unknown[] = batched ? text : [text];
    for (const t of texts)
      if (typeof t !== 'string')
        throw new PeftNodeError(
          'ERR_INVALID_INPUT',
          `tokenizer: text must be a string or an array of strings, got ${t === null ? 'null' : typeof t}`,
        );
    const multiple = options.pad_to_multiple_of ?? null;
    const { padding, truncate, max_length } = this.strategies(
      options.padding ?? false,
      options.truncation,
      options.max_length ?? null,
      multiple,
    );
    const add = options.add_special_tokens ?? true;
    const input_ids = (texts as string[]).map((t) => this.encodeOne(t, add, truncate ? max_length : null));
    let enc: Record<string, number[][]> = { input_ids, attention_mask: input_ids.map((r) => r.map(() => 1)) };
    if (padding) enc = this.padRows(enc, padding, max_length, multiple, options.padding_side);
    if (options.return_tensors === 'pt')
      return { input_ids: toTensor(enc.input_ids, 'input_ids'), attention_mask: toTensor(enc.attention_mask, 'attention_mask') };
    if (batched) return { input_ids: enc.input_ids, attention_mask: enc.attention_mask };
    return { input_ids: enc.input_ids[0], attention_mask: enc.attention_mask[0] };
  }

  /** transformers' `_get_padding_truncation_strategies`: resolves what to do and the length to use. */
  private strategies(
    padding: PaddingStrategy,
    truncation: TruncationStrategy | undefined,
    max_length: number | null,
    multiple: number | null,
  ): { padding: 'longest' | 'max_length' | null; truncate: boolean; max_length: number | null } {
    let pad: 'longest' | 'max_length' | null =
      padding === true || padding === 'longest' ? 'longest' : padding === 'max_length' ? 'max_length' : null;
    // Backward compatibility kept by transformers: max_length alone switches truncation on.
    const t = truncation ?? (max_length !== null && padding === false ? true : false);
    let truncate = t === true || t === 'longest_first' || t === 'only_first';
    if (max_length === null) {
      if (pad === 'max_length') {
        if (this.model_max_length > LARGE_INTEGER) pad = null;
        else max_length = this.model_max_length;
      }
      if (truncate) {
        if (this.model_max_length > LARGE_INTEGER) truncate = false;
        else max_length = this.model_max_length;
      }
    }
    if (max_length !== null && (!Number.isInteger(max_length) || max_length < 0))
      throw new PeftNodeError('ERR_INVALID_INPUT', `max_length must be a non-negative integer, got ${max_length}`);
    if (multiple !== null && (!Number.isInteger(multiple) || multiple < 1))
      throw new PeftNodeError('ERR_INVALID_INPUT', `pad_to_multiple_of must be a positive integer, got ${multiple}`);
    if (pad && this.pad_token_id === null)
      throw new PeftNodeError('ERR_INVALID_INPUT', 'Asking to pad but the tokenizer does not have a padding token. ' +
        'Set one, e.g. `tokenizer.pad_token = tokenizer.eos_token`.');
    if (truncate && pad && multiple !== null && max_length !== null && max_length % multiple !== 0)
      throw new PeftNodeError('ERR_INVALID_INPUT', `Truncation and padding are both activated but truncation length (${max_length}) ` +
        `is not a multiple of pad_to_multiple_of (${multiple}).`);
    return { padding: pad, truncate, max_length };
  }

  /**
   * Ids of one text. With a length limit, the text's own tokens are cut (on `truncation_side`) so that they and the
   * post-processor's special tokens fit, as the Rust tokenizer does.
   */
  private encodeOne(text: string, add_special_tokens: boolean, max_length: number | null): number[] {
    return this.pipeline('encoding', () => this.encodeOneUnchecked(text, add_special_tokens, max_length));
  }

  /**
   * Runs a call into the tokenizers pipeline. tokenizers.js builds its steps from tokenizer.json lazily, so a broken
   * file can fail at the first text that reaches a step: that is the file's fault (ERR_CONFIG naming it), not a
   * TypeError for the caller.
   */
  private pipeline<T>(what: string, fn: () => T): T {
    try {
      return fn();
    } catch (err) {
      if (err instanceof PeftNodeError) throw err;
      const from = this.name_or_path ? ` of ${this.name_or_path}` : '';
      throw new PeftNodeError('ERR_CONFIG', `tokenizer.json${from} describes a pipeline that fails while ${what}: ${(err as Error)?.message ?? String(err)}`, { cause: err });
    }
  }

  private encodeOneUnchecked(text: string, add_special_tokens: boolean, max_length: number | null): number[] {
    if (max_length === null) return this.backend.encode(text, { add_special_tokens }).ids;
    const content = this.backend.tokenize(text, { add_special_tokens: false });
    const pp = this.backend.post_processor;
    const added = add_special_tokens && pp ? pp([], null, true).tokens.length : 0;
    if (max_length < added)
      throw new PeftNodeError(
        'ERR_INVALID_INPUT',
        `max_length ${max_length} is shorter than the ${added} special tokens added to every sequence`,
      );
    const keep = max_length - added;
    let kept = content;
    if (content.length > keep) kept = this.truncation_side === 'left' ? content.slice(content.length - keep) : content.slice(0, keep);
    const tokens: string[] = add_special_tokens && pp ? pp(kept, null, true).tokens : kept;
    const unk = this.backend.model?.unk_token_id;
    return tokens.map((tok) => this.backend.token_to_id(tok) ?? unk).filter((id): id is number => id !== undefined);
  }

  /** Pads each row of `input_ids` (and `attention_mask`, `token_type_ids`, `special_tokens_mask`) like `_pad`. */
  private padRows(
    rows: Record<string, number[][]>,
    strategy: 'longest' | 'max_length',
    max_length: number | null,
    multiple: number | null,
    side?: Side,
  ): Record<string, number[][]> {
    const ids = rows.input_ids;
    let target = strategy === 'longest' ? ids.reduce((m, r) => Math.max(m, r.length), 0) : max_length!;
    if (multiple !== null && target % multiple !== 0) target = (Math.floor(target / multiple) + 1) * multiple;
    if (target > 2 ** 32) throw new PeftNodeError('ERR_INVALID_INPUT', `cannot pad to ${target} tokens (max_length too large)`);
    const padSide = side ?? this.padding_side;
    const padValues: Record<string, number> = {
      input_ids: this.pad_token_id!,
      attention_mask: 0,
      token_type_ids: 0, // pad_token_type_id
      special_tokens_mask: 1,
    };
    const out: Record<string, number[][]> = { ...rows };
    if (!out.attention_mask) out.attention_mask = ids.map((r) => r.map(() => 1));
    for (const key of Object.keys(padValues)) {
      if (!out[key]) continue;
      out[key] = out[key].map((row, i) => {
        const diff = target - ids[i].length;
        if (diff <= 0) return row;
        const fill = new Array<number>(diff).fill(padValues[key]);
        return padSide === 'left' ? [...fill, ...row] : [...row, ...fill];
      });
    }
    return out;
  }

  /**
   * transformers' `tokenizer.pad(features)`: pads `input_ids` with `pad_token_id` and `attention_mask` with 0 (made
   * of ones if missing) on the padding side; other keys pass through unpadded. Takes a list of examples, one
   * dict of batched lists, or a single example (then returns flat lists / 1-D tensors).
   */
  pad(features: EncodedExample[] | Record<string, unknown[][]>, options: PadOptions & { return_tensors: 'pt' }): PaddedBatch<Tensor>;
  pad(features: EncodedExample[] | Record<string, unknown[][]>, options?: PadOptions & { return_tensors?: null }): PaddedBatch<number[][]>;
  pad(features: EncodedExample, options: PadOptions & { return_tensors: 'pt' }): PaddedBatch<Tensor>;
  pad(features: EncodedExample, options?: PadOptions & { return_tensors?: null }): PaddedBatch<number[]>;
  pad(features: EncodedExample[] | Record<string, unknown>, options: PadOptions = {}): PaddedBatch<number[][] | number[] | Tensor> {
    options = options ?? {};
    let columns: Record<string, unknown[]>;
    if (Array.isArray(features)) {
      if (features.length === 0 || features.some((f) => typeof f !== 'object' || f === null))
        throw new PeftNodeError('ERR_INVALID_INPUT', 'pad: expected a non-empty list of examples (objects) that include input_ids');
      const keys = Object.keys(features[0]);
      columns = Object.fromEntries(keys.map((k) => [k, features.map((f) => f[k])]));
    } else columns = { ...(features as Record<string, unknown[]>) };
    if (!Array.isArray(columns.input_ids) && !typedArrayKind(columns.input_ids))
      throw new PeftNodeError(
        'ERR_INVALID_INPUT',
        'You should supply an encoding or a list of encodings to this method that includes input_ids, ' +
          `but you provided ${JSON.stringify(Object.keys(columns))}`,
      );
    const single = !Array.isArray(columns.input_ids[0]) && !ArrayBuffer.isView(columns.input_ids[0]);
    const rows: Record<string, number[][]> = {};
    for (const [k, v] of Object.entries(columns)) {
      const list = single ? [v] : v;
      const isList = (r: unknown): boolean => Array.isArray(r) || typedArrayKind(r) !== undefined;
      rows[k] = list.map((r) => (isList(r) ? Array.from(r as ArrayLike<number | bigint>, Number) : (r as number[])));
    }
    // The padded keys must be one list per example (a dataset row with input_ids: null would otherwise be a TypeError).
    for (const k of PADDED_KEYS) {
      if (!rows[k]) continue;
      if (rows[k].length !== rows.input_ids.length)
        throw new PeftNodeError('ERR_INVALID_INPUT', `pad: '${k}' has ${rows[k].length} rows but input_ids has ${rows.input_ids.length}`);
      rows[k].forEach((r, i) => {
        if (!Array.isArray(r)) throw new PeftNodeError('ERR_INVALID_INPUT', `pad: example ${i} has no '${k}' list (got ${repr(r)})`);
      });
    }
    const multiple = options.pad_to_multiple_of ?? null;
    const { padding, max_length } = this.strategies(options.padding ?? true, undefined, options.max_length ?? null, multiple);
    if (!rows.attention_mask) rows.attention_mask = rows.input_ids.map((r) => r.map(() => 1));
    const padded = padding ? this.padRows(rows, padding, max_length, multiple, options.padding_side) : rows;
    const out: Record<string, number[][] | number[] | Tensor> = {};
    for (const [k, v] of Object.entries(padded)) {
      const value = single ? v[0] : v;
      out[k] = options.return_tensors === 'pt' ? toTensor(value, k) : value;
    }
    return out as PaddedBatch<number[][] | number[] | Tensor>;
  }

  /** Ids of one text (`tokenizer(text, options).input_ids`). */
  encode(text: string, options: Omit<TokenizerCallOptions, 'return_tensors'> = {}): number[] {
    return this.__call__(text, { ...options, return_tensors: null }).input_ids as number[];
  }

  /** The tokens of a text, without special tokens (`tokenizer.tokenize(text)`). */
  tokenize(text: string): string[] {
    return this.pipeline('tokenizing', () => this.backend.tokenize(text, { add_special_tokens: false }));
  }

  /** Token strings of ids; an id outside the vocabulary gives null. */
  convert_ids_to_tokens(ids: number): string | null;
  convert_ids_to_tokens(ids: number[]): (string | null)[];
  convert_ids_to_tokens(ids: number | number[]): string | null | (string | null)[] {
    const one = (id: number): string | null => this.backend.id_to_token(id) ?? null;
    return this.pipeline('looking up ids', () => (typeof ids === 'number' ? one(ids) : ids.map(one)));
  }

  /** Ids of token strings; an unknown token gives `unk_token_id` (null if there is none). */
  convert_tokens_to_ids(tokens: string): number | null;
  convert_tokens_to_ids(tokens: string[]): (number | null)[];
  convert_tokens_to_ids(tokens: string | string[]): number | null | (number | null)[] {
    return this.pipeline('looking up tokens', () => {
      const unk = this.unk_token === null ? undefined : this.backend.token_to_id(this.unk_token);
      const one = (t: string): number | null => this.backend.token_to_id(t) ?? unk ?? null;
      return typeof tokens === 'string' ? one(tokens) : tokens.map(one);
    });
  }

  /**
   * Text of a sequence of ids (an array, typed array, or a 1-D Tensor). As in transformers, ids outside the
   * vocabulary are skipped; negative ids (e.g. -100 label padding) are an error.
   */
  decode(token_ids: ArrayLike<number | bigint> | Tensor | number, options: DecodeOptions = {}): string {
    options = options ?? {};
    const list = idList(token_ids, 'decode');
    return this.pipeline('decoding', () => {
      const ids = list.filter((id) => this.backend.id_to_token(id) !== undefined);
      if (ids.length === 0) return ''; // tokenizers.js rejects an empty list
      return this.backend.decode(ids, {
        skip_special_tokens: options.skip_special_tokens ?? false,
        clean_up_tokenization_spaces: options.clean_up_tokenization_spaces ?? this.clean_up_tokenization_spaces,
      });
    });
  }

  /** {@link decode} for each sequence of a batch (nested arrays or a [batch, seq_len] Tensor). */
  batch_decode(sequences: ArrayLike<number | bigint>[] | Tensor, options: DecodeOptions = {}): string[] {
    return idRows(sequences).map((s) => this.decode(s, options));
  }

  /** A summary like Python's repr (node's default would dump the whole vocabulary). */
  [Symbol.for('nodejs.util.inspect.custom')](): string {
    const special = Object.fromEntries(SPECIAL_TOKEN_KEYS.filter((k) => this[k] !== null).map((k) => [k, this[k]]));
    return `PreTrainedTokenizer(name_or_path='${this.name_or_path}', vocab_size=${this.vocab_size}, ` +
      `model_max_length=${this.model_max_length}, padding_side='${this.padding_side}', ` +
      `truncation_side='${this.truncation_side}', special_tokens=${JSON.stringify(special)})`;
  }

  /**
   * Writes tokenizer.json (verbatim), tokenizer_config.json (as loaded, with the current padding side, lengths and
   * special tokens) and special_tokens_map.json into `save_directory`; returns the written paths.
   */
  async save_pretrained(save_directory: string): Promise<string[]> {
    try {
      await fs.mkdir(save_directory, { recursive: true });
      const special = Object.fromEntries(SPECIAL_TOKEN_KEYS.filter((k) => this[k] !== null).map((k) => [k, this[k]]));
      const config: Record<string, unknown> = {
        ...this.initConfig,
        ...special,
        padding_side: this.padding_side,
        truncation_side: this.truncation_side,
        clean_up_tokenization_spaces: this.clean_up_tokenization_spaces,
      };
      if (this.model_max_length < VERY_LARGE_INTEGER) config.model_max_length = this.model_max_length;
      if (this.additional_special_tokens.length) special.additional_special_tokens = this.additional_special_tokens as never;
      const files: [string, string][] = [
        ['tokenizer_config.json', JSON.stringify(config, null, 2) + '\n'],
        ['special_tokens_map.json', JSON.stringify(special, null, 2) + '\n'],
        ['tokenizer.json', this.tokenizerJson],
      ];
      const written: string[] = [];
      for (const [name, text] of files) {
        const p = path.join(save_directory, name);
        await fs.writeFile(p, text, 'utf8');
        written.push(p);
      }
      return written;
    } catch (err) {
      if (err instanceof PeftNodeError) throw err;
      throw new PeftNodeError('ERR_IO', `cannot save the tokenizer to ${save_directory}: ${(err as Error).message}`, { cause: err });
    }
  }
}
