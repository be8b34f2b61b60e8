/**
 * `Dataset`: an immutable in-memory table with HF datasets' API (`map`, `filter`, `select`, `shuffle`,
 * `train_test_split`, ...). Columns keep their order; every operation returns a new Dataset.
 *
 * Values are JSON-like. They are copied on the way in and on the way out (typed arrays and Tensors become plain
 * arrays, `undefined` becomes `null`), so mutating a row you got never changes the dataset — as with Arrow-backed
 * rows in Python. Shuffles use NumPy's generator bit for bit ({@link default_rng}), so a seed selects the same rows
 * as Python.
 */
import { PeftNodeError } from '../errors';
import { Tensor } from '../tensor';
import { isPlainObject } from './json';
import { default_rng } from './numpy_random';

/**
 * One row: column name → value. Values are typed `any` on purpose: rows hold dynamic JSON, and Python code such as
 * `"Human: " + example["instruction"]` should port without casts.
 */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type Row = Record<string, any>;

/** Rows in columnar form (`{ column: values[] }`), as `ds.slice()` returns and batched `map` / `filter` see them. */
export type Batch<T extends Row = Row> = { [K in keyof T]: T[K][] };

/** Options of {@link Dataset.map}. */
export interface MapOptions {
  /** Pass batches (`{ column: values[] }`) instead of single rows. Default false. */
  batched?: boolean;
  /** Rows per batch when `batched`; `null` or ≤ 0 means the whole dataset in one batch. Default 1000. */
  batch_size?: number | null;
  /** Skip a last batch smaller than `batch_size`. Default false. */
  drop_last_batch?: boolean;
  /**
   * Input columns to drop before the function's output is merged in (a returned column of the same name is kept).
   * Every name must exist, else an error names the missing ones.
   */
  remove_columns?: string | string[];
  /** Pass the row index (or the batch's indices) as the second argument; only then is one passed. Default false. */
  with_indices?: boolean;
}

/** Options of {@link Dataset.filter}. */
export interface FilterOptions {
  /** Pass batches and expect one boolean per row. Default false. */
  batched?: boolean;
  /** Rows per batch when `batched`; `null` or ≤ 0 means everything at once. Default 1000. */
  batch_size?: number | null;
  /** Also pass the row index (or the batch's indices) as the second argument. Default false. */
  with_indices?: boolean;
}

/** Options of {@link Dataset.shuffle}. */
export interface ShuffleOptions {
  /** Seed of `np.random.default_rng`; the same seed gives the same order as Python. Random when omitted. */
  seed?: number | bigint;
}

/** Options of {@link Dataset.train_test_split}. */
export interface TrainTestSplitOptions {
  /** A fraction in (0, 1) (rounded up) or a row count ≥ 1. Default 0.25 when `train_size` is unset too. */
  test_size?: number;
  /** A fraction in (0, 1) (rounded down) or a row count ≥ 1. Default: the rows not in the test split. */
  train_size?: number;
  /** Shuffle before splitting. Default true. */
  shuffle?: boolean;
  /** Seed of the shuffle (`np.random.default_rng(seed).permutation`). Random when omitted. */
  seed?: number | bigint;
}

/** Python's list repr, used in messages that mirror HF's: `['a', 'b']`. */
export const pyList = (names: readonly string[]): string => `[${names.map((n) => `'${n}'`).join(', ')}]`;

/** Deep copy into stored form: arrays and plain objects copied, typed arrays / Tensors to arrays, undefined to null. */
function copyValue(v: unknown): unknown {
  if (v === undefined || v === null) return null;
  if (typeof v !== 'object') return v;
  if (Array.isArray(v)) return v.map(copyValue);
  if (v instanceof Tensor) return v.tolist();
  if (ArrayBuffer.isView(v) && !(v instanceof DataView))
    return Array.from(v as unknown as ArrayLike<number | bigint>, (x) => (typeof x === 'bigint' ? Number(x) : x));
  if (isPlainObject(v)) return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, copyValue(x)]));
  return v; // other class instances are kept by reference
}

// Keys that runtimes and test tools probe on any object; a missing one of these must not raise.
const PROBED_KEYS = new Set(['then', 'toJSON', 'asymmetricMatch', '$$typeof', 'nodeType', '@@__IMMUTABLE_ITERABLE__@@']);

/** Wraps a row / batch so that reading a missing column throws like Python's `KeyError`, naming the column. */
function strict<T extends object>(obj: T): T {
  return new Proxy(obj, {
    get(target, key, receiver) {
      if (typeof key === 'string' && !(key in target) && !PROBED_KEYS.has(key))
        throw new PeftNodeError(
          'ERR_INVALID_INPUT',
          `KeyError: '${key}': no such column. Current columns in the dataset: ${pyList(Object.keys(target))}`,
        );
      return Reflect.get(target, key, receiver);
    },
  });
}

const invalid = (message: string): PeftNodeError => new PeftNodeError('ERR_INVALID_INPUT', message);

const asList = (x: string | string[] | undefined): string[] => (x === undefined ? [] : typeof x === 'string' ? [x] : [...x]);

function range(start: number, end: number): number[] {
  return Array.from({ length: Math.max(0, end - start) }, (_, i) => start + i);
}

/** An in-memory table of rows with HF datasets' `Dataset` API. Iterable: `for (const row of ds)`. */
export class Dataset<T extends Row = Row> implements Iterable<T> {
  private readonly names: readonly string[];
  private readonly cols: ReadonlyMap<string, readonly unknown[]>;
  /** Number of rows. */
  readonly num_rows: number;

  private constructor(names: string[], cols: Map<string, unknown[]>, num_rows: number) {
    this.names = names;
    this.cols = cols;
    this.num_rows = num_rows;
  }

  /**
   * Builds a Dataset from columns that are already in stored form (no copy). Internal: `load_dataset` uses it.
   * @internal
   */
  static _from_columns<T extends Row = Row>(names: string[], cols: Map<string, unknown[]>): Dataset<T> {
    const n = names.length ? cols.get(names[0])!.length : 0;
    for (const name of names) {
      const len = cols.get(name)!.length;
      if (len !== n)
        throw new PeftNodeError('ERR_INVALID_INPUT', `column '${name}' has ${len} values but column '${names[0]}' has ${n}`);
    }
    return new Dataset<T>(names, cols, n);
  }

  /** `Dataset.from_list(rows)`: the columns are the first row's keys (as in HF); a row missing one gets null. */
  static from_list<T extends Row = Row>(rows: readonly T[]): Dataset<T> {
    const names = rows.length ? Object.keys(rows[0]) : [];
    const cols = new Map(names.map((k) => [k, rows.map((r) => copyValue(r[k]))]));
    return Dataset._from_columns<T>(names, cols);
  }

  /** `Dataset.from_dict({ column: values[] })`; all columns must have the same length. */
  static from_dict<T extends Row = Row>(columns: Record<string, readonly unknown[]>): Dataset<T> {
    const names = Object.keys(columns);
    for (const k of names)
      if (!Array.isArray(columns[k])) throw new PeftNodeError('ERR_INVALID_INPUT', `from_dict: column '${k}' must be an array`);
    return Dataset._from_columns<T>(names, new Map(names.map((k) => [k, columns[k].map(copyValue)])));
  }

  /** Column names, in order. */
  get column_names(): string[] {
    return [...this.names];
  }

  /** Number of columns. */
  get num_columns(): number {
    return this.names.length;
  }

  /** `[num_rows, num_columns]`. */
  get shape(): [number, number] {
    return [this.num_rows, this.names.length];
  }

  /** Number of rows (Python's `len(ds)`). */
  get length(): number {
    return this.num_rows;
  }

  private checkColumns(names: readonly string[], what: string): void {
    const missing = names.filter((n) => !this.cols.has(n));
    if (missing.length)
      throw new PeftNodeError(
        'ERR_INVALID_INPUT',
        `${what} ${pyList(missing)} not in the dataset. Current columns in the dataset: ${pyList(this.names)}`,
      );
  }

  private row(i: number): T {
    return Object.fromEntries(this.names.map((k) => [k, copyValue(this.cols.get(k)![i])])) as T;
  }

  private batch(indices: readonly number[]): Batch<T> {
    return Object.fromEntries(this.names.map((k) => [k, indices.map((i) => copyValue(this.cols.get(k)![i]))])) as Batch<T>;
  }

  /** Row `i` (`ds[i]` in Python); negative indices count from the end. */
  at(i: number): T {
    if (!Number.isInteger(i) || i >= this.num_rows || i < -this.num_rows)
      throw new PeftNodeError('ERR_INVALID_INPUT', `Invalid key: ${i} is out of bounds for size ${this.num_rows}`);
    return this.row(i < 0 ? i + this.num_rows : i);
  }

  /** Rows `start` to `end` (exclusive) as columns, like Python's `ds[start:end]`; negative bounds count from the end. */
  slice(start?: number, end?: number): Batch<T> {
    return this.batch(range(0, this.num_rows).slice(start, end));
  }

  /** All values of one column (`ds["column"]` in Python). */
  column(name: string): unknown[] {
    this.checkColumns([name], 'Column');
    return this.cols.get(name)!.map(copyValue);
  }

  /** The rows at `indices`, in that order (repeats allowed). */
  select(indices: Iterable<number>): Dataset<T> {
    const idx = [...indices];
    for (const i of idx)
      if (!Number.isInteger(i) || i < 0 || i >= this.num_rows)
        throw new PeftNodeError('ERR_INVALID_INPUT', `Index ${i} out of range for dataset of size ${this.num_rows}.`);
    const cols = new Map(this.names.map((k) => [k, idx.map((i) => this.cols.get(k)![i])]));
    return new Dataset<T>([...this.names], cols, idx.length);
  }

  /** A copy without the named columns (each must exist). */
  remove_columns(column_names: string | string[]): Dataset<T> {
    const drop = asList(column_names);
    this.checkColumns(drop, 'Column name');
    const names = this.names.filter((n) => !drop.includes(n));
    return new Dataset<T>(names, new Map(names.map((k) => [k, [...this.cols.get(k)!]])), this.num_rows);
  }

  /**
   * Rows in the order `np.random.default_rng(seed).permutation(num_rows)` gives — the same rows as Python's
   * `ds.shuffle(seed=seed)`.
   */
  shuffle(options: ShuffleOptions = {}): Dataset<T> {
    if (this.num_rows === 0) return this;
    return this.select(default_rng(options.seed ?? randomSeed()).permutation(this.num_rows));
  }

  /**
   * Splits into `{ train, test }` exactly as HF does: sizes from `test_size` / `train_size` (a fraction in (0, 1) or
   * a row count — JS has no float/int distinction, so `1` means one row), then with `shuffle` the first `n_test`
   * entries of `default_rng(seed).permutation(num_rows)` are the test rows and the next `n_train` the train rows.
   */
  train_test_split(options: TrainTestSplitOptions = {}): { train: Dataset<T>; test: Dataset<T> } {
    const n = this.num_rows;
    if (n === 0) return { train: this, test: this };
    let { test_size, train_size } = options;
    if (test_size === undefined && train_size === undefined) test_size = 0.25;
    const isFraction = (x: number): boolean => x > 0 && x < 1;
    for (const [name, x] of [['test_size', test_size], ['train_size', train_size]] as const) {
      if (x === undefined) continue;
      if (!(isFraction(x) || (Number.isInteger(x) && x > 0 && x < n)))
        throw new PeftNodeError(
          'ERR_INVALID_INPUT',
          `${name}=${x} should be either positive and smaller than the number of samples ${n} or a float in the (0, 1) range`,
        );
    }
    if (test_size !== undefined && train_size !== undefined && isFraction(test_size) && isFraction(train_size)) {
      if (test_size + train_size > 1)
        throw invalid(`The sum of test_size and train_size = ${test_size + train_size}, should be in the (0, 1) range. ` +
          'Reduce test_size and/or train_size.');
    }
    let nTest = test_size === undefined ? undefined : isFraction(test_size) ? Math.ceil(test_size * n) : test_size;
    let nTrain = train_size === undefined ? undefined : isFraction(train_size) ? Math.floor(train_size * n) : train_size;
    if (nTrain === undefined) nTrain = n - nTest!;
    if (nTest === undefined) nTest = n - nTrain;
    if (nTrain + nTest > n)
      throw invalid(`The sum of train_size and test_size = ${nTrain + nTest}, should be smaller than the number of samples ${n}. ` +
        'Reduce test_size and/or train_size.');
    if (nTrain === 0)
      throw invalid(`With n_samples=${n}, test_size=${test_size} and train_size=${train_size}, the resulting train set will be empty. ` +
        'Adjust any of the aforementioned parameters.');
    if (options.shuffle === false) return { train: this.select(range(0, nTrain)), test: this.select(range(nTrain, nTrain + nTest)) };
    const perm = default_rng(options.seed ?? randomSeed()).permutation(n);
    return { train: this.select(perm.slice(nTest, nTest + nTrain)), test: this.select(perm.slice(0, nTest)) };
  }

  /**
   * Applies `fn` to every row (or batch) and merges what it returns into the row: returned columns are added or
   * overwrite, `remove_columns` are dropped first (a column the function returns again is kept). Column order is
   * HF's: surviving input columns in their order, then new ones. If `fn` returns `undefined` for every row the
   * dataset is returned unchanged (`remove_columns` included), as HF does for a function returning `None`.
   *
   * The row passed to `fn` is a copy; reading a column it does not have throws (Python's `KeyError`) — use
   * `'col' in example` to test. The output row type `O` is the caller's assertion (default: any row).
   *
   * Batched: `fn(batch, indices)` gets `{ column: values[] }` and returns columns of equal length; when every input
   * column is removed that length may differ from the batch's (e.g. to split or drop rows).
   */
  map<O extends Row = Row>(fn: (example: T) => Row | void, options?: MapOptions & { batched?: false; with_indices?: false }): Dataset<O>;
  map<O extends Row = Row>(fn: (example: T, index: number) => Row | void, options: MapOptions & { batched?: false; with_indices: true }): Dataset<O>;
  map<O extends Row = Row>(
    fn: (batch: Batch<T>) => Record<string, unknown[]> | void,
    options: MapOptions & { batched: true; with_indices?: false },
  ): Dataset<O>;
  map<O extends Row = Row>(
    fn: (batch: Batch<T>, indices: number[]) => Record<string, unknown[]> | void,
    options: MapOptions & { batched: true; with_indices: true },
  ): Dataset<O>;
  map<O extends Row = Row>(fn: (x: never, i: never) => unknown, options: MapOptions = {}): Dataset<O> {
    const remove = asList(options.remove_columns);
    this.checkColumns(remove, 'Column to remove');
    if (this.num_rows === 0) return this.remove_columns(remove) as unknown as Dataset<O>;
    const call = withIndices(fn, options.with_indices);
    const kind = options.batched ? 'batch' : 'row';
    const pieces: { data: Row; size: number }[] = [];
    let updated = false;
    for (const indices of this.chunks(options.batched ?? false, options.batch_size, options.drop_last_batch ?? false)) {
      const input: Row = options.batched ? this.batch(indices) : this.row(indices[0]);
      const index = options.batched ? indices : indices[0];
      const out = call(strict(input), index);
      if (out === undefined || out === null) {
        pieces.push({ data: dropKeys(input, remove), size: indices.length });
        continue;
      }
      if (!isPlainObject(out))
        throw invalid(`map: the function must return an object (or nothing), got ${typeName(out)} for ${kind} ${indices[0]}`);
      updated = true;
      const data = { ...dropKeys(input, remove), ...out };
      let size = 1;
      if (options.batched) {
        const lens = Object.entries(data).map(([k, v]) => {
          if (!Array.isArray(v)) throw invalid(`map(batched): column '${k}' must be an array, got ${typeName(v)}`);
          return [k, v.length] as const;
        });
        size = lens.length ? lens[0][1] : 0;
        const bad = lens.find(([, len]) => len !== size);
        if (bad)
          throw invalid(`map(batched): column '${bad[0]}' has ${bad[1]} values but column '${lens[0][0]}' has ${size} ` +
            '(a batch may change its number of rows only when every input column is removed)');
      }
      pieces.push({ data, size });
    }
    if (!updated) return this as unknown as Dataset<O>;
    return this.assemble<O>(pieces, options.batched ?? false);
  }

  /** Keeps the rows for which `fn` returns true (batched: one boolean per row of the batch). */
  filter(fn: (example: T) => boolean, options?: FilterOptions & { batched?: false; with_indices?: false }): Dataset<T>;
  filter(fn: (example: T, index: number) => boolean, options: FilterOptions & { batched?: false; with_indices: true }): Dataset<T>;
  filter(fn: (batch: Batch<T>) => boolean[], options: FilterOptions & { batched: true; with_indices?: false }): Dataset<T>;
  filter(fn: (batch: Batch<T>, indices: number[]) => boolean[], options: FilterOptions & { batched: true; with_indices: true }): Dataset<T>;
  filter(fn: (x: never, i: never) => unknown, options: FilterOptions = {}): Dataset<T> {
    const call = withIndices(fn, options.with_indices);
    const keep: number[] = [];
    for (const indices of this.chunks(options.batched ?? false, options.batch_size, false)) {
      if (!options.batched) {
        if (call(strict(this.row(indices[0])), indices[0])) keep.push(indices[0]);
        continue;
      }
      const mask = call(strict(this.batch(indices)), indices);
      if (!Array.isArray(mask) || mask.length !== indices.length)
        throw invalid(`filter(batched): the function must return ${indices.length} booleans, got ${typeName(mask)}`);
      indices.forEach((i, k) => mask[k] && keep.push(i));
    }
    return this.select(keep);
  }

  /** Row indices per call of a map / filter function. */
  private *chunks(batched: boolean, batch_size: number | null | undefined, drop_last: boolean): Generator<number[]> {
    const n = this.num_rows;
    if (!batched) {
      for (let i = 0; i < n; i++) yield [i];
      return;
    }
    const size = batch_size === null || (batch_size ?? 1000) <= 0 ? Math.max(n, 1) : (batch_size ?? 1000);
    const end = drop_last ? Math.floor(n / size) * size : n;
    for (let s = 0; s < end; s += size) yield range(s, Math.min(s + size, end));
  }

  /** Concatenates map outputs; column order: input columns still present (input order), then new ones. */
  private assemble<O extends Row>(pieces: { data: Row; size: number }[], batched: boolean): Dataset<O> {
    const seen = new Set<string>();
    for (const p of pieces) for (const k of Object.keys(p.data)) seen.add(k);
    const names = [...this.names.filter((k) => seen.has(k)), ...[...seen].filter((k) => !this.cols.has(k))];
    const cols = new Map<string, unknown[]>(names.map((k) => [k, []]));
    for (const { data, size } of pieces)
      for (const k of names) {
        const col = cols.get(k)!;
        if (!(k in data)) for (let i = 0; i < size; i++) col.push(null);
        else if (batched) for (const v of data[k] as unknown[]) col.push(copyValue(v));
        else col.push(copyValue(data[k]));
      }
    return Dataset._from_columns<O>(names, cols);
  }

  /** Every row, as objects (`ds.to_list()`). */
  to_list(): T[] {
    return range(0, this.num_rows).map((i) => this.row(i));
  }

  /** Every column (`ds.to_dict()`). */
  to_dict(): Batch<T> {
    return this.batch(range(0, this.num_rows));
  }

  *[Symbol.iterator](): Iterator<T> {
    for (let i = 0; i < this.num_rows; i++) yield this.row(i);
  }

  /** `Dataset({ features: [...], num_rows: N })`, like Python's repr. */
  toString(): string {
    return `Dataset({\n    features: ${pyList(this.names)},\n    num_rows: ${this.num_rows}\n})`;
  }

  [Symbol.for('nodejs.util.inspect.custom')](): string {
    return this.toString();
  }
}

/**
 * Splits by name, as `load_dataset` returns them without `split` (`dd.train` or `dd["train"]`) and as
 * `train_test_split` does.
 */
export type DatasetDict<T extends Row = Row> = Record<string, Dataset<T>>;

/** The user's function, given the index (or indices) only with `with_indices`, as HF passes it. */
function withIndices(fn: (x: never, i: never) => unknown, with_indices = false): (x: Row, i: number | number[]) => unknown {
  const f = fn as (x: Row, i?: number | number[]) => unknown;
  return with_indices ? (x, i) => f(x, i) : (x) => f(x);
}

function dropKeys(obj: Row, keys: readonly string[]): Row {
  if (keys.length === 0) return obj;
  return Object.fromEntries(Object.entries(obj).filter(([k]) => !keys.includes(k)));
}

function typeName(v: unknown): string {
  return v === null ? 'null' : Array.isArray(v) ? 'an array' : typeof v;
}

// HF draws an unseeded shuffle's seed from NumPy's global generator; here it comes from Math.random.
function randomSeed(): number {
  return Math.floor(Math.random() * 2 ** 32);
}
