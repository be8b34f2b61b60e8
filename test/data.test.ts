/**
 * load_dataset / Dataset / numpy's default_rng against HF datasets 5.0.1 and numpy 2.4 (golden file from
 * scripts/gen_fixtures_data.py), plus the errors: malformed JSON named by file, line and column, missing columns.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { load_dataset, LoadDatasetOptions } from '../lib/data/load_dataset';
import { Dataset, Row } from '../lib/data/dataset';
import { default_rng } from '../lib/data/numpy_random';
import { globToRegExp } from '../lib/data/data_files';
import { PeftNodeError } from '../lib/errors';
import { Tensor } from '../lib/tensor';
import { FIXTURES, tmpDir } from './helpers';

const DATA = path.join(FIXTURES, 'data');
const golden = JSON.parse(fs.readFileSync(path.join(DATA, 'datasets_golden.json'), 'utf8'));

type Table = { column_names: string[]; rows: Row[] };
interface LoadCase {
  kwargs: LoadDatasetOptions;
  splits?: Record<string, Table>;
  dataset?: Table;
  error?: string;
}

/** The golden kwargs with paths made absolute (they are stored relative to test/fixtures/data). */
function absolute(kw: LoadDatasetOptions): LoadDatasetOptions {
  const abs = (p: string) => path.join(DATA, p);
  const out: LoadDatasetOptions = { ...kw };
  if (kw.data_dir) out.data_dir = abs(kw.data_dir);
  if (kw.data_files !== undefined && !kw.data_dir) {
    const f = kw.data_files;
    out.data_files = typeof f === 'string' ? abs(f) : Array.isArray(f) ? f.map(abs)
      : Object.fromEntries(Object.entries(f).map(([k, v]) => [k, Array.isArray(v) ? v.map(abs) : abs(v)]));
  }
  return out;
}

const table = (ds: Dataset): Table => ({ column_names: ds.column_names, rows: ds.to_list() });

async function expectError(p: Promise<unknown> | (() => unknown), code: string, re?: RegExp): Promise<void> {
  let err: unknown;
  try {
    await (typeof p === 'function' ? p() : p);
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(PeftNodeError);
  expect((err as PeftNodeError).code).toBe(code);
  if (re) expect((err as Error).message).toMatch(re);
}

const sft = () => load_dataset('json', { data_dir: path.join(DATA, 'sft'), split: 'train' });

describe('load_dataset("json") equals HF datasets', () => {
  test.each((golden.loads as LoadCase[]).map((c) => [JSON.stringify(c.kwargs), c] as const))('%s', async (_, c) => {
    const kw = absolute(c.kwargs);
    if (c.error) {
      // HF: DatasetGenerationError (a later file has a column the first one lacks)
      await expectError(load_dataset('json', { ...kw, split: undefined }), 'ERR_INVALID_INPUT', /\['zz'\].*same columns/);
      return;
    }
    if (c.dataset) {
      const ds = await load_dataset('json', { ...kw, split: kw.split! });
      expect(ds).toBeInstanceOf(Dataset);
      expect(table(ds)).toEqual(c.dataset);
      return;
    }
    const dd = await load_dataset('json', { ...kw, split: undefined });
    expect(Object.keys(dd)).toEqual(Object.keys(c.splits!));
    for (const [name, t] of Object.entries(c.splits!)) expect(table(dd[name])).toEqual(t);
  });

  test('data_dir: .train and ["train"], files in sorted order, README.md and hidden files skipped', async () => {
    const dd = await load_dataset('json', { data_dir: path.join(DATA, 'sft') });
    expect(dd.train).toBe(dd['train']);
    expect(dd.train.num_rows).toBe(5); // 2 from part-a.jsonl, then 3 from part-b.json; not README.md / .hidden.json
    expect(dd.train.at(0).instruction).toBe('把下面的句子翻译成英文。');
    expect(dd.train.at(2).output).toBe('月亮挂在天上，\n照亮回家的路。🌙');
  });

  test('malformed JSON → ERR_JSON naming the file, line and column', async () => {
    const bad = (f: string) => path.join(DATA, 'bad', f);
    await expectError(load_dataset('json', { data_files: bad('array.json') }), 'ERR_JSON', /bad\/array\.json: invalid JSON at line 3 column 11: expected a double-quoted property name/);
    await expectError(load_dataset('json', { data_files: bad('lines.jsonl') }), 'ERR_JSON', /bad\/lines\.jsonl: invalid JSON at line 3 column 9: expected ',' or '}'/);
    await expectError(load_dataset('json', { data_files: bad('unterminated.jsonl') }), 'ERR_JSON', /unterminated\.jsonl: invalid JSON at line 2 column 15: unterminated string/);
    await expectError(load_dataset('json', { data_files: bad('pretty_object.json') }), 'ERR_JSON', /pretty_object\.json: holds one JSON object.*field/);
    const dir = tmpDir();
    fs.writeFileSync(path.join(dir, 'x.jsonl'), '{"a": 1}\n["not", "an object"]\n');
    await expectError(load_dataset('json', { data_files: path.join(dir, 'x.jsonl') }), 'ERR_JSON', /x\.jsonl: line 2: expected a JSON object per line/);
    fs.writeFileSync(path.join(dir, 'y.json'), '[{"a": 1}, "text"]');
    await expectError(load_dataset('json', { data_files: path.join(dir, 'y.json') }), 'ERR_JSON', /y\.json: a JSON array of rows must hold only objects/);
  });

  test('missing files and unknown splits are named', async () => {
    await expectError(load_dataset('json', { data_files: path.join(DATA, 'nope.json') }), 'ERR_FILE_NOT_FOUND', /nope\.json/);
    await expectError(load_dataset('json', { data_dir: path.join(DATA, 'no-such-dir') }), 'ERR_FILE_NOT_FOUND', /no-such-dir/);
    await expectError(load_dataset('json', { data_files: 'nothing-*.json', data_dir: path.join(DATA, 'sft') }), 'ERR_FILE_NOT_FOUND', /split 'train'.*nothing-\*\.json/);
    await expectError(load_dataset('json', { data_dir: path.join(DATA, 'sft'), split: 'test' }), 'ERR_INVALID_INPUT', /Unknown split "test"\. Should be one of \['train'\]/);
    await expectError(load_dataset('csv' as 'json', { data_dir: DATA }), 'ERR_INVALID_INPUT', /only the "json" builder/);
  });

  test('glob semantics follow fsspec: * stays in a segment, **/ spans folders', () => {
    expect(globToRegExp('**/train[-._ 0-9]*').test('train.json')).toBe(true);
    expect(globToRegExp('**/train[-._ 0-9]*').test('a/b/train_1.jsonl')).toBe(true);
    expect(globToRegExp('**/train[-._ 0-9]*').test('mytrain.json')).toBe(false);
    expect(globToRegExp('*.json').test('a/b.json')).toBe(false);
    expect(globToRegExp('**').test('a/b.json')).toBe(true);
  });
});

describe("numpy's default_rng(seed).permutation(n), bit for bit", () => {
  test('every golden (seed, n), including seeds above 2**32 and 2**63', () => {
    const cases = golden.permutations as { seed: string; n: number; perm: number[] }[];
    expect(cases.length).toBeGreaterThan(30);
    for (const c of cases) expect([c.seed, c.n, default_rng(BigInt(c.seed)).permutation(c.n)]).toEqual([c.seed, c.n, c.perm]);
  });

  test('n = 51179 (the alpaca_data_zh size), seed 42: head, tail and sha256 of the whole order', () => {
    const p = default_rng(42).permutation(51179);
    const g = golden.permutation_51179_seed42;
    expect(p.slice(0, 32)).toEqual(g.head);
    expect(p.slice(-32)).toEqual(g.tail);
    expect(crypto.createHash('sha256').update(p.join(',')).digest('hex')).toBe(g.sha256);
  });

  test('bad seeds are named errors', async () => {
    await expectError(() => default_rng(-1), 'ERR_INVALID_INPUT', /non-negative/);
    await expectError(() => default_rng(1.5), 'ERR_INVALID_INPUT', /integer/);
  });
});

describe('Dataset', () => {
  test('shuffle(seed) and train_test_split select the rows Python selects', async () => {
    const ds = await sft();
    for (const s of golden.shuffle) expect(ds.shuffle({ seed: s.seed }).column('instruction')).toEqual(s.instructions);
    for (const s of golden.train_test_split) {
      const r = ds.train_test_split(s.kwargs);
      expect([s.kwargs, r.train.column('instruction'), r.test.column('instruction')]).toEqual([s.kwargs, s.train, s.test]);
    }
    expect(ds.shuffle({ seed: 3 }).num_rows).toBe(5);
    expect(new Set(ds.shuffle().column('instruction'))).toEqual(new Set(ds.column('instruction')));
  });

  test('train_test_split size checks mirror HF', async () => {
    const ds = await sft();
    await expectError(() => ds.train_test_split({ test_size: 5 }), 'ERR_INVALID_INPUT', /test_size=5 should be either positive and smaller than the number of samples 5/);
    await expectError(() => ds.train_test_split({ test_size: 1.5 }), 'ERR_INVALID_INPUT', /test_size=1\.5/);
    await expectError(() => ds.train_test_split({ test_size: 0.6, train_size: 0.6 }), 'ERR_INVALID_INPUT', /sum of test_size and train_size/);
    await expectError(() => ds.train_test_split({ test_size: 3, train_size: 3 }), 'ERR_INVALID_INPUT', /should be smaller than the number of samples 5/);
  });

  test('map: column order, remove_columns and returned None as in HF', () => {
    const small = Dataset.from_list([{ a: 1, b: 2 }, { a: 3, b: 4 }]);
    const [removeA, removeAB, cba, none, batched, withIdx] = golden.map_columns;
    const m1 = small.map(() => ({ c: 0, a: 9 }), { remove_columns: ['a'] });
    expect([m1.column_names, m1.to_list()]).toEqual([removeA.column_names, removeA.rows]);
    expect(small.map(() => ({ c: 0, a: 9 }), { remove_columns: ['a', 'b'] }).column_names).toEqual(removeAB.column_names);
    expect(small.map(() => ({ c: 0, b: 9, a: 5 })).column_names).toEqual(cba.column_names);
    expect(small.map(() => undefined, { remove_columns: 'a' }).to_list()).toEqual(none.rows);
    const b = small.map((batch) => ({ n: new Array(3).fill(batch.a.length) }), { batched: true, batch_size: 1, remove_columns: ['a', 'b'] });
    expect(b.to_list()).toEqual(batched.rows);
    expect(small.map((_, i) => ({ i }), { with_indices: true }).to_list()).toEqual(withIdx.rows);
    // Without with_indices the function gets the row only (a defaulted second parameter keeps its default).
    expect(small.map((_: Row, extra = 'default') => ({ extra })).column('extra')).toEqual(['default', 'default']);
    // @ts-expect-error the index is passed only with with_indices, as in HF
    expect(small.map((_: Row, i: number) => ({ i })).column('i')).toEqual([null, null]);
    expect(Dataset.from_list([{ a: 1 }, { b: 2 }]).to_list()).toEqual(golden.from_list_first_row_keys);
  });

  test('map errors name the missing column, like HF', async () => {
    const ds = await sft();
    await expectError(() => ds.map((e) => e, { remove_columns: ['zz', 'input'] }), 'ERR_INVALID_INPUT',
      /^Column to remove \['zz'\] not in the dataset\. Current columns in the dataset: \['instruction', 'input', 'output'\]$/);
    await expectError(() => ds.map((e) => ({ x: e['instructions'].length })), 'ERR_INVALID_INPUT',
      /KeyError: 'instructions'.*\['instruction', 'input', 'output'\]/);
    await expectError(() => ds.map((b) => ({ x: b.instruction.slice(1) }), { batched: true }), 'ERR_INVALID_INPUT', /column 'x' has 4 values but column 'instruction' has 5/);
    await expectError(() => ds.map(() => 42 as unknown as Row), 'ERR_INVALID_INPUT', /must return an object/);
    await expectError(() => ds.remove_columns('nope'), 'ERR_INVALID_INPUT', /Column name \['nope'\] not in the dataset/);
    await expectError(() => ds.column('nope'), 'ERR_INVALID_INPUT', /Column \['nope'\] not in the dataset/);
    // `in` checks and JSON.stringify inside a map function are fine
    const m = ds.map((e) => ({ has: 'input' in e, hasNot: 'zz' in e, json: JSON.stringify(e).length > 0 }));
    expect(m.column('has')).toEqual([true, true, true, true, true]);
    expect(m.column('hasNot')).toEqual([false, false, false, false, false]);
  });

  test('indexing, slicing, select, filter, iteration, from_dict, to_dict', async () => {
    const ds = await sft();
    expect([ds.num_rows, ds.length, ds.num_columns, ds.shape]).toEqual([5, 5, 3, [5, 3]]);
    expect(ds.column_names).toEqual(['instruction', 'input', 'output']);
    expect(ds.at(-1)).toEqual(ds.at(4));
    expect(ds.slice(0, 2)).toEqual({ instruction: ds.column('instruction').slice(0, 2), input: ['今天天气很好。', ''], output: ds.column('output').slice(0, 2) });
    expect(ds.slice(5)).toEqual({ instruction: [], input: [], output: [] });
    expect(ds.slice(-1).instruction).toEqual(['解释什么是机器学习，并举一个例子。']);
    expect(ds.select([4, 0, 0]).column('instruction')).toEqual([ds.at(4).instruction, ds.at(0).instruction, ds.at(0).instruction]);
    await expectError(() => ds.select([5]), 'ERR_INVALID_INPUT', /Index 5 out of range for dataset of size 5\./);
    await expectError(() => ds.at(5), 'ERR_INVALID_INPUT', /Invalid key: 5 is out of bounds for size 5/);
    expect(ds.filter((e) => e.input !== '').column('input')).toEqual(['今天天气很好。', '3 + 4 = ?']);
    expect(ds.filter((_, i) => i % 2 === 0, { with_indices: true }).num_rows).toBe(3);
    expect(ds.filter((b) => b.input.map((x: string) => x === ''), { batched: true, batch_size: 2 }).num_rows).toBe(3);
    const seen: string[] = [];
    for (const row of ds) seen.push(row.instruction);
    expect(seen).toEqual(ds.column('instruction'));
    expect(Dataset.from_dict(ds.to_dict()).to_list()).toEqual(ds.to_list());
    await expectError(() => Dataset.from_dict({ a: [1, 2], b: [1] }), 'ERR_INVALID_INPUT', /column 'b' has 1 values but column 'a' has 2/);
    expect(String(ds)).toBe("Dataset({\n    features: ['instruction', 'input', 'output'],\n    num_rows: 5\n})");
  });

  test('rows are copies: mutating what you get or give never changes the dataset', () => {
    const ids = [1, 2, 3];
    const ds = Dataset.from_list([{ ids, t: Tensor.from([4, 5], 'int64'), typed: new Int32Array([6]), u: undefined }]);
    ids.push(99);
    const row = ds.at(0);
    expect(row).toEqual({ ids: [1, 2, 3], t: [4, 5], typed: [6], u: null });
    row.ids.push(7);
    expect(ds.at(0).ids).toEqual([1, 2, 3]);
    expect(ds.map((e) => { e.ids.push(8); return {}; }).at(0).ids).toEqual([1, 2, 3, 8]); // in-place edits inside map count, as in HF
    expect(ds.at(0).ids).toEqual([1, 2, 3]);
  });
});
