/**
 * `DataCollatorForSeq2Seq` (transformers `data/data_collator.py`): turns a list of tokenized examples into one
 * padded batch. `input_ids` / `attention_mask` go through `tokenizer.pad` (pad id, mask 0, on
 * `tokenizer.padding_side`); `labels` are padded by hand with `label_pad_token_id` (-100) on the same side to the
 * longest label — or to `max_length` with `padding: 'max_length'` — rounded up to `pad_to_multiple_of`.
 *
 * The collator is callable like Python's: `collator(features)`. `collator.call(features)` and
 * `collator.__call__(features)` do the same, for code that prefers a method.
 */
import { PeftNodeError, repr } from '../errors';
import { Tensor } from '../tensor';
import { Callable } from '../tokenizer/callable';
import { EncodedExample, PaddingStrategy, PreTrainedTokenizer } from '../tokenizer/tokenization_utils';

/** Options of {@link DataCollatorForSeq2Seq}, with transformers' defaults. */
export interface DataCollatorForSeq2SeqOptions {
  /** The tokenizer whose `pad_token_id` and `padding_side` are used. */
  tokenizer: PreTrainedTokenizer;
  /** `true` / `'longest'` (default): pad to the longest in the batch; `'max_length'`; `false`: no padding. */
  padding?: PaddingStrategy;
  /** Target length for `padding: 'max_length'`. */
  max_length?: number | null;
  /** Round padded lengths (inputs and labels) up to a multiple of this. */
  pad_to_multiple_of?: number | null;
  /** Value that pads `labels`, ignored by the loss. Default -100. */
  label_pad_token_id?: number;
  /** Only `'pt'` (int64 Tensors), the default. */
  return_tensors?: 'pt';
}

/** One example: `input_ids`, usually `attention_mask` and `labels` (or `label`). */
export interface Seq2SeqFeature extends EncodedExample {
  labels?: number[] | null;
  label?: number[] | null;
}

/** A collated batch: int64 Tensors of shape [batch, seq_len]; `labels` only when the examples have labels. */
export interface Seq2SeqBatch {
  input_ids: Tensor;
  attention_mask: Tensor;
  labels?: Tensor;
  [key: string]: Tensor | undefined;
}

/** Call signature of the collator (`collator(features)`). */
export interface DataCollatorForSeq2Seq {
  (features: Seq2SeqFeature[]): Seq2SeqBatch;
}

/** Pads tokenized examples into a batch, like `transformers.DataCollatorForSeq2Seq`. */
export class DataCollatorForSeq2Seq extends Callable {
  /** The tokenizer used for padding. */
  readonly tokenizer: PreTrainedTokenizer;
  /** Padding strategy. */
  readonly padding: PaddingStrategy;
  /** Target length with `padding: 'max_length'`. */
  readonly max_length: number | null;
  /** Round lengths up to a multiple of this. */
  readonly pad_to_multiple_of: number | null;
  /** Label padding value. */
  readonly label_pad_token_id: number;
  /** Tensor kind returned. */
  readonly return_tensors: 'pt';

  constructor(options: DataCollatorForSeq2SeqOptions) {
    super();
    // Duck-typed: a tokenizer from another copy of the package is fine too.
    if (typeof options?.tokenizer?.pad !== 'function')
      throw new PeftNodeError('ERR_INVALID_INPUT', 'DataCollatorForSeq2Seq needs { tokenizer } (from AutoTokenizer.from_pretrained)');
    if (options.return_tensors !== undefined && options.return_tensors !== 'pt')
      throw new PeftNodeError(
        'ERR_INVALID_INPUT',
        `DataCollatorForSeq2Seq: return_tensors must be 'pt', got ${repr(options.return_tensors)}`,
      );
    this.tokenizer = options.tokenizer;
    this.padding = options.padding ?? true;
    this.max_length = options.max_length ?? null;
    this.pad_to_multiple_of = options.pad_to_multiple_of ?? null;
    this.label_pad_token_id = options.label_pad_token_id ?? -100;
    this.return_tensors = 'pt';
  }

  /** Collates `features` into int64 Tensors (what calling the collator does). */
  __call__(features: Seq2SeqFeature[]): Seq2SeqBatch {
    if (!Array.isArray(features) || features.length === 0)
      throw new PeftNodeError('ERR_INVALID_INPUT', 'DataCollatorForSeq2Seq: expected a non-empty array of examples');
    features.forEach((f, i) => {
      if (typeof f !== 'object' || f === null || Array.isArray(f))
        throw new PeftNodeError('ERR_INVALID_INPUT', `DataCollatorForSeq2Seq: example ${i} is not an object of columns (got ${repr(f)})`);
    });
    const labelName = 'label' in features[0] ? 'label' : 'labels';
    let labels = labelName in features[0] ? features.map((f) => f[labelName]) : null;
    if (labels && labels.every((l) => l === null || l === undefined)) labels = null;
    // Labels are padded separately: tokenizer.pad would not use -100.
    const nonLabel = features.map((f) => Object.fromEntries(Object.entries(f).filter(([k]) => k !== labelName)) as EncodedExample);
    const batch: Seq2SeqBatch = this.tokenizer.pad(nonLabel, {
      padding: this.padding,
      max_length: this.max_length,
      pad_to_multiple_of: this.pad_to_multiple_of,
      return_tensors: 'pt',
    });
    if (labels) {
      const rows = labels.map((l, i) => {
        if (!Array.isArray(l))
          throw new PeftNodeError('ERR_INVALID_INPUT', `DataCollatorForSeq2Seq: example ${i} has no ${labelName} list`);
        return l;
      });
      const noPadding = this.padding === false || this.padding === 'do_not_pad';
      let padded = rows;
      if (!noPadding) {
        let len = this.padding === 'max_length' && this.max_length !== null ? this.max_length : Math.max(...rows.map((l) => l.length));
        const m = this.pad_to_multiple_of;
        if (m !== null) len = Math.ceil(len / m) * m;
        const left = this.tokenizer.padding_side === 'left';
        // As transformers: a label longer than the target stays as it is (the tensor build then fails).
        padded = rows.map((l) => {
          const fill = new Array<number>(Math.max(0, len - l.length)).fill(this.label_pad_token_id);
          return left ? [...fill, ...l] : [...l, ...fill];
        });
      }
      const lens = new Set(padded.map((l) => l.length));
      if (lens.size > 1)
        throw new PeftNodeError(
          'ERR_INVALID_INPUT',
          `DataCollatorForSeq2Seq: labels have different lengths (${[...lens].join(', ')}); use padding`,
        );
      batch.labels = Tensor.from(padded, 'int64');
    }
    return batch;
  }

  /**
   * Same as calling the collator: `collator.call(features)`. This shadows `Function.prototype.call`; the
   * `(thisArg, features)` form still works, for generic code that invokes callables through `.call`.
   */
  call(features: Seq2SeqFeature[]): Seq2SeqBatch;
  call(thisArg: unknown, features: Seq2SeqFeature[]): Seq2SeqBatch;
  call(...args: unknown[]): Seq2SeqBatch {
    return this.__call__((args.length >= 2 ? args[1] : args[0]) as Seq2SeqFeature[]);
  }

  /** `DataCollatorForSeq2Seq(padding=True, ...)`, like Python's repr (node's default would list the tokenizer). */
  [Symbol.for('nodejs.util.inspect.custom')](): string {
    return `DataCollatorForSeq2Seq(tokenizer=${this.tokenizer.name_or_path || '<tokenizer>'}, padding=${this.padding}, ` +
      `max_length=${this.max_length}, pad_to_multiple_of=${this.pad_to_multiple_of}, label_pad_token_id=${this.label_pad_token_id}, ` +
      `return_tensors=${this.return_tensors})`;
  }
}
