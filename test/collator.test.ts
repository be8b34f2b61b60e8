/**
 * DataCollatorForSeq2Seq against transformers 5.17, and the seed notebook's pipeline end to end:
 * load_dataset → map(process_func, { remove_columns }) → collator, compared with Python's output for the same rows
 * (golden file from scripts/gen_fixtures_data.py).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { AutoTokenizer } from '../lib/tokenizer/auto';
import { PreTrainedTokenizer } from '../lib/tokenizer/tokenization_utils';
import { load_dataset } from '../lib/data/load_dataset';
import { Row } from '../lib/data/dataset';
import { DataCollatorForSeq2Seq, DataCollatorForSeq2SeqOptions, Seq2SeqFeature } from '../lib/data/data_collator';
import { PeftNodeError } from '../lib/errors';
import { Tensor } from '../lib/tensor';
import { FIXTURES } from './helpers';

const DATA = path.join(FIXTURES, 'data');
interface GoldenBatch {
  name: string;
  kwargs: Omit<DataCollatorForSeq2SeqOptions, 'tokenizer'>;
  indices: number[];
  padding_side: 'left' | 'right';
  batch: Record<string, { dtype: string; value: number[][] } | null>;
}
interface Pipeline {
  max_length: number;
  column_names: string[];
  features: Seq2SeqFeature[];
  lengths: number[];
  batches: GoldenBatch[];
}
const golden: { pipelines: Pipeline[] } = JSON.parse(fs.readFileSync(path.join(DATA, 'collator_golden.json'), 'utf8'));

/** The seed notebook's process_func (design.md §1), with MAX_LENGTH as a parameter. */
function makeProcessFunc(tokenizer: PreTrainedTokenizer, MAX_LENGTH: number) {
  return (example: Row) => {
    const instruction = tokenizer(['Human: ' + example['instruction'], example['input']].join('\n').trim() + '\n\nAssistant: ');
    const response = tokenizer(example['output'] + tokenizer.eos_token);
    let input_ids = [...instruction.input_ids, ...response.input_ids];
    let attention_mask = [...instruction.attention_mask, ...response.attention_mask];
    let labels = [...new Array(instruction.input_ids.length).fill(-100), ...response.input_ids];
    if (input_ids.length > MAX_LENGTH) {
      input_ids = input_ids.slice(0, MAX_LENGTH);
      attention_mask = attention_mask.slice(0, MAX_LENGTH);
      labels = labels.slice(0, MAX_LENGTH);
    }
    return { input_ids, attention_mask, labels };
  };
}

function expectBatch(actual: Record<string, Tensor | undefined>, expected: GoldenBatch['batch']): void {
  expect(Object.keys(actual).sort()).toEqual(Object.keys(expected).filter((k) => expected[k] !== null).sort());
  for (const [k, v] of Object.entries(expected)) {
    if (v === null) continue;
    const t = actual[k]!;
    expect(t).toBeInstanceOf(Tensor);
    expect([k, t.type, t.dims]).toEqual([k, v.dtype, [v.value.length, v.value[0].length]]);
    expect([k, t.tolist()]).toEqual([k, v.value]);
  }
}

let tok: PreTrainedTokenizer;
beforeAll(async () => {
  tok = await AutoTokenizer.from_pretrained(path.join(FIXTURES, 'tokenizer'));
});

describe.each(golden.pipelines.map((p) => [p.max_length, p] as const))('pipeline with MAX_LENGTH %i', (_, p) => {
  test('load_dataset → map(process_func, { remove_columns }) gives Python’s features', async () => {
    const ds = (await load_dataset('json', { data_dir: path.join(DATA, 'sft') })).train;
    const tokenized = ds.map(makeProcessFunc(tok, p.max_length), { remove_columns: ds.column_names });
    expect(tokenized.column_names).toEqual(p.column_names);
    expect(tokenized.to_list()).toEqual(p.features);
    expect(p.features.map((f) => f.input_ids.length)).toEqual(p.lengths);
  });

  test.each(p.batches.map((b) => [b.name, b] as const))('collator %s equals Python', (_, b) => {
    tok.padding_side = b.padding_side;
    try {
      const collator = new DataCollatorForSeq2Seq({ tokenizer: tok, ...b.kwargs });
      const features = b.indices.map((i) => p.features[i]);
      expectBatch(collator(features), b.batch);
      expectBatch(collator.call(features), b.batch);
      expect(features).toEqual(b.indices.map((i) => p.features[i])); // inputs untouched
    } finally {
      tok.padding_side = 'left';
    }
  });
});

describe('DataCollatorForSeq2Seq', () => {
  const feats = (): Seq2SeqFeature[] => golden.pipelines[0].features.slice(0, 3);

  test('is callable, has HF defaults, and pads labels with -100 on the left for BLOOM', () => {
    const c = new DataCollatorForSeq2Seq({ tokenizer: tok });
    expect(typeof c).toBe('function');
    expect(c).toBeInstanceOf(DataCollatorForSeq2Seq);
    expect([c.padding, c.max_length, c.pad_to_multiple_of, c.label_pad_token_id, c.return_tensors]).toEqual([true, null, null, -100, 'pt']);
    const batch = c(feats());
    const T = Math.max(...feats().map((f) => f.input_ids.length));
    expect(batch.input_ids.dims).toEqual([3, T]);
    const rows = batch.labels!.tolist() as number[][];
    feats().forEach((f, i) => {
      expect(rows[i].slice(T - f.input_ids.length)).toEqual(f.labels);
      expect(rows[i].slice(0, T - f.input_ids.length).every((v) => v === -100)).toBe(true);
    });
    expect(c.__call__(feats()).labels!.tolist()).toEqual(rows);
    expect(c.call(null, feats()).labels!.tolist()).toEqual(rows); // Function.prototype.call's (thisArg, ...args) form
  });

  test('"label" is accepted and returned as "labels"; no labels → no labels key', () => {
    const c = new DataCollatorForSeq2Seq({ tokenizer: tok });
    const withLabel = feats().map(({ labels, ...rest }) => ({ ...rest, label: labels }));
    expect(c(withLabel).labels!.tolist()).toEqual(c(feats()).labels!.tolist());
    const noLabels = feats().map(({ input_ids, attention_mask }) => ({ input_ids, attention_mask }));
    expect('labels' in c(noLabels)).toBe(false);
    const nullLabels = feats().map((f) => ({ ...f, labels: null }));
    expect('labels' in c(nullLabels)).toBe(false);
  });

  test('padding: false with unequal lengths fails like transformers; bad inputs are named', () => {
    const c = new DataCollatorForSeq2Seq({ tokenizer: tok, padding: false });
    expect(() => c(feats())).toThrow(PeftNodeError);
    expect(() => c(feats())).toThrow(/different lengths/);
    const one = feats().slice(0, 1);
    expect(c(one).input_ids.tolist()).toEqual([one[0].input_ids]);
    const ok = new DataCollatorForSeq2Seq({ tokenizer: tok });
    expect(() => ok([])).toThrow(/non-empty array/);
    expect(() => new DataCollatorForSeq2Seq({} as DataCollatorForSeq2SeqOptions)).toThrow(/needs \{ tokenizer \}/);
    expect(() => new DataCollatorForSeq2Seq({ tokenizer: tok, return_tensors: 'np' as 'pt' })).toThrow(/return_tensors must be 'pt'/);
  });
});
