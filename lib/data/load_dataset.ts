/**
 * `load_dataset("json", { data_dir | data_files, split?, field? })` — HF datasets' packaged JSON builder for local
 * files. Each file is either a JSON array (of objects; of other values → a "text" column) or JSON Lines (one object
 * per line, blank lines skipped); rows of all files of a split are concatenated in file order.
 *
 * Columns, as HF infers them: every key of the first file of the first split, in order of first appearance. A row
 * without one of those keys gets `null`; a key that file did not have is an error (HF: "All the data files must
 * have the same columns"). Values are kept as parsed: no Arrow type unification (HF would turn `1` into `1.0` next
 * to `1.5`, which JS cannot tell apart anyway, or JSON-encode mixed-type columns).
 */
import { PeftNodeError, repr } from '../errors';
import { DataFiles, resolve_data_files } from './data_files';
import { Dataset, DatasetDict, pyList, Row } from './dataset';
import { isPlainObject, parseJson, readTextFile } from './json';

/** Options of {@link load_dataset}. */
export interface LoadDatasetOptions {
  /** Folder of data files; without `data_files`, splits come from file and folder names (else all is "train"). */
  data_dir?: string;
  /** A path or glob, a list of them (split "train"), or `{ split: path(s) }`; relative to `data_dir` if given. */
  data_files?: DataFiles;
  /** Return only this split as a Dataset instead of every split. */
  split?: string;
  /** For files holding one JSON object: the key whose array holds the rows (HF's `field`). */
  field?: string;
}

/**
 * Loads local JSON / JSON Lines files like `datasets.load_dataset("json", ...)`. Returns every split by name
 * (`(await load_dataset("json", { data_dir })).train`), or the one named by `split`.
 *
 * Errors: ERR_FILE_NOT_FOUND (naming the path or pattern), ERR_JSON (naming file, line and column),
 * ERR_INVALID_INPUT (unknown split; files with different columns).
 */
export async function load_dataset(path: 'json', options: LoadDatasetOptions & { split: string }): Promise<Dataset<Row>>;
export async function load_dataset(path: 'json', options: LoadDatasetOptions & { split?: undefined }): Promise<DatasetDict<Row>>;
export async function load_dataset(path: 'json', options: LoadDatasetOptions): Promise<Dataset<Row> | DatasetDict<Row>> {
  if ((path as string) !== 'json')
    throw new PeftNodeError('ERR_INVALID_INPUT', `load_dataset: only the "json" builder is supported, got ${repr(path)}`);
  options = options ?? {};
  const isStrings = (v: unknown) => typeof v === 'string' || (Array.isArray(v) && v.length > 0 && v.every((x) => typeof x === 'string'));
  const df = options.data_files;
  if (df !== undefined && !isStrings(df) && !(isPlainObject(df) && Object.keys(df).length > 0 && Object.values(df).every(isStrings)))
    throw new PeftNodeError('ERR_INVALID_INPUT', `load_dataset: data_files must be a path, a list of paths or { split: path(s) }, got ${repr(df)}`);
  for (const k of ['data_dir', 'split', 'field'] as const)
    if (options[k] !== undefined && typeof options[k] !== 'string')
      throw new PeftNodeError('ERR_INVALID_INPUT', `load_dataset: ${k} must be a string, got ${repr(options[k])}`);
  const splits = await resolve_data_files(options);
  if (options.split !== undefined && !(options.split in splits))
    throw new PeftNodeError('ERR_INVALID_INPUT', `Unknown split "${options.split}". Should be one of ${pyList(Object.keys(splits))}.`);

  let schema: string[] | undefined; // fixed by the first file read, as HF infers features from it
  const out: DatasetDict<Row> = {};
  for (const [split, files] of Object.entries(splits)) {
    const cols = new Map<string, unknown[]>();
    for (const file of files) {
      const rows = readRows(await readTextFile(file), file, options.field);
      if (schema === undefined) {
        const keys = new Set<string>();
        for (const r of rows) for (const k of Object.keys(r)) keys.add(k);
        schema = [...keys];
      }
      for (const k of schema) if (!cols.has(k)) cols.set(k, []);
      const known = new Set(schema);
      rows.forEach((r, i) => {
        const extra = Object.keys(r).filter((k) => !known.has(k));
        if (extra.length)
          throw new PeftNodeError(
            'ERR_INVALID_INPUT',
            `${file}: row ${i} has columns ${pyList(extra)} that the first data file does not have (${pyList(schema!)}); ` +
              'all the data files must have the same columns',
          );
        for (const k of schema!) cols.get(k)!.push(k in r ? r[k] : null);
      });
    }
    if (options.split === undefined || options.split === split) out[split] = Dataset._from_columns(schema ?? [], cols);
  }
  return options.split !== undefined ? out[options.split] : out;
}

/** Rows of one file: a JSON array, an object holding the rows under `field`, or JSON Lines. */
function readRows(text: string, file: string, field: string | undefined): Row[] {
  if (field !== undefined) {
    const doc = parseJson(text, file);
    const rows = isPlainObject(doc) ? doc[field] : undefined;
    if (!Array.isArray(rows))
      throw new PeftNodeError('ERR_JSON', `${file}: expected a JSON object whose field '${field}' is an array of rows`);
    return toRows(rows, file);
  }
  if (text.trimStart().startsWith('[')) return toRows(parseJson(text, file) as unknown[], file);

  const rows: Row[] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    if (line.trim() === '') continue;
    let value: unknown;
    try {
      value = parseJson(line, file, i + 1);
    } catch (err) {
      // A pretty-printed single object is valid JSON but not JSON Lines: say what to do instead.
      if (i === 0 && isPlainObject(tryParse(text)))
        throw new PeftNodeError('ERR_JSON', `${file}: holds one JSON object, not rows; pass { field: "<key of the rows array>" }`, {
          cause: err,
        });
      throw err;
    }
    if (!isPlainObject(value))
      throw new PeftNodeError(
        'ERR_JSON',
        `${file}: line ${i + 1}: expected a JSON object per line (JSON Lines), got ${JSON.stringify(value)?.slice(0, 40)}`,
      );
    rows.push(value);
  }
  return rows;
}

/** Array elements → rows: objects as they are; other values (e.g. strings) as a "text" column, like HF. */
function toRows(items: unknown[], file: string): Row[] {
  const objects = items.filter(isPlainObject).length;
  if (objects === items.length) return items as Row[];
  if (objects === 0) return items.map((text) => ({ text }));
  throw new PeftNodeError('ERR_JSON', `${file}: a JSON array of rows must hold only objects (or only plain values for a "text" column)`);
}

function tryParse(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}
