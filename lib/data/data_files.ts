/**
 * Which files make which split — HF datasets' `data_files.py` for local paths:
 * - `data_files` (a path / glob, a list of them, or `{ split: ... }`) → split "train" unless named; globs resolve
 *   relative to `data_dir` (or the working directory) and each pattern's matches are sorted, as fsspec's glob does.
 * - `data_dir` alone → the first rule below that matches any file wins: sharded `data/{split}-00000-of-00001.*`
 *   names; `*.eval` logs; split keywords in a directory name (`train/`, `test-data/`...) or in a file name
 *   (`train.json`, `my-test.jsonl`, `dev_v1.json`...); otherwise every file goes to "train".
 * Hidden files and folders (`.x`) and `__x` folders are skipped unless a pattern names them, as are README.md,
 * config.json, dataset_info(s).json, dataset_dict.json and dummy_data.zip.
 */
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { PeftNodeError } from '../errors';

/** `data_files` as `load_dataset` accepts it: one path or glob, several, or several per split. */
export type DataFiles = string | string[] | Record<string, string | string[]>;

const SPLIT_KEYWORDS: [string, string[]][] = [
  ['train', ['train', 'training']],
  ['validation', ['validation', 'valid', 'dev', 'val']],
  ['test', ['test', 'testing', 'eval', 'evaluation']],
];
const SEP = '-._ 0-9'; // NON_WORDS_CHARS: what may surround a split keyword
const FILENAME_PATTERNS = ['**/{keyword}[{sep}]*', '**/*[{sep}]{keyword}[{sep}]*'];
const DIRNAME_PATTERNS = ['**/{keyword}/**', '**/{keyword}[{sep}]*/**', '**/*[{sep}]{keyword}/**', '**/*[{sep}]{keyword}[{sep}]*/**'];
const FILES_TO_IGNORE = ['README.md', 'config.json', 'dataset_info.json', 'dataset_infos.json', 'dummy_data.zip', 'dataset_dict.json'];
const DEFAULT_SPLITS = ['train', 'validation', 'test'];

const keywordPatterns = (templates: string[]): Record<string, string[]> =>
  Object.fromEntries(
    SPLIT_KEYWORDS.map(([split, words]) => [
      split,
      words.flatMap((k) => templates.map((t) => t.replace('{keyword}', k).replaceAll('{sep}', SEP))),
    ]),
  );

/** Rules tried in order for a bare `data_dir` (after the sharded-name rule). */
const DEFAULT_PATTERN_SETS: Record<string, string[]>[] = [
  { logs: ['**/*.eval'] },
  keywordPatterns(DIRNAME_PATTERNS),
  keywordPatterns(FILENAME_PATTERNS),
  { train: ['**'] },
];

/** fsspec glob semantics: `*` and `?` stay within a path segment, `**` crosses segments, `[...]` is a class. */
export function globToRegExp(pattern: string): RegExp {
  let re = '';
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i];
    if (pattern.startsWith('**/', i)) {
      re += '(?:.*/)?';
      i += 2;
    } else if (pattern.startsWith('**', i)) {
      re += '.*';
      i += 1;
    } else if (c === '*') re += '[^/]*';
    else if (c === '?') re += '[^/]';
    else if (c === '[' && pattern.indexOf(']', i + 2) !== -1) {
      const end = pattern.indexOf(']', i + 2);
      const body = pattern.slice(i + 1, end).replace(/^!/, '^').replace(/[\\\]]/g, '\\$&');
      re += `[${body}]`;
      i = end;
    } else re += c.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  }
  return new RegExp(`^${re}$`);
}

const hasMagic = (p: string): boolean => /[*?[]/.test(p);

/**
 * Files under `dir` as sorted posix paths relative to it (symlinks to files count as files), at most `maxDepth`
 * path segments deep (a pattern without `**` cannot match deeper, so there is no need to walk further).
 */
async function listFiles(dir: string, maxDepth = Infinity): Promise<string[]> {
  const out: string[] = [];
  const walk = async (rel: string, depth: number): Promise<void> => {
    const entries = await fs.readdir(path.join(dir, rel), { withFileTypes: true });
    for (const e of entries) {
      const r = rel ? `${rel}/${e.name}` : e.name;
      let isDir = e.isDirectory();
      let isFile = e.isFile();
      if (e.isSymbolicLink()) {
        const st = await fs.stat(path.join(dir, r)).catch(() => null);
        isDir = st?.isDirectory() ?? false;
        isFile = st?.isFile() ?? false;
      }
      if (isFile) out.push(r);
      else if (isDir && depth < maxDepth) await walk(r, depth + 1);
    }
  };
  await walk('', 1);
  return out.sort(compareCodePoints);
}

/** Python's string order (by code point), which fsspec's `sorted()` uses; JS's default compares UTF-16 units. */
export function compareCodePoints(a: string, b: string): number {
  const x = [...a];
  const y = [...b];
  for (let i = 0; i < Math.min(x.length, y.length); i++) {
    if (x[i] !== y[i]) return x[i].codePointAt(0)! - y[i].codePointAt(0)!;
  }
  return x.length - y.length;
}

/** Whether `rel` is hidden or in a hidden / `__special` folder that `pattern` does not ask for. */
function isUnrequested(rel: string, pattern: string): boolean {
  const parts = rel.split('/');
  const wantsHidden = pattern.split('/').some((s) => s.startsWith('.') && s !== '.' && s !== '..');
  const wantsSpecial = pattern.split('/').some((s) => s.startsWith('__'));
  if (!wantsHidden && parts.some((p) => p.startsWith('.'))) return true;
  return !wantsSpecial && parts.slice(0, -1).some((p) => p.startsWith('__'));
}

/** Files (absolute paths) that `pattern` names, relative to `base`; [] for a glob that matches nothing. */
async function resolvePattern(pattern: string, base: string): Promise<string[]> {
  const abs = path.resolve(base, pattern);
  if (!hasMagic(pattern)) {
    const st = await fs.stat(abs).catch(() => null);
    if (!st) throw new PeftNodeError('ERR_FILE_NOT_FOUND', `Unable to find '${abs}'`);
    if (st.isDirectory())
      throw new PeftNodeError(
        'ERR_INVALID_INPUT',
        `data_files entry is a directory: ${abs} (pass it as data_dir, or a glob like '${pattern}/*.json')`,
      );
    return [abs];
  }
  // Glob: list from the deepest folder before the first wildcard, match the rest.
  const posix = abs.split(path.sep).join('/');
  const firstMagic = posix.search(/[*?[]/);
  const root = posix.slice(0, posix.lastIndexOf('/', firstMagic) + 1) || '/';
  const rest = posix.slice(root.length);
  const re = globToRegExp(rest);
  const ignore = new Set(FILES_TO_IGNORE.filter((f) => f !== path.posix.basename(rest)));
  const depth = rest.includes('**') ? Infinity : rest.split('/').length;
  const files = await listFiles(root, depth).catch(() => [] as string[]);
  return files
    .filter((r) => re.test(r) && !ignore.has(path.posix.basename(r)) && !isUnrequested(r, rest))
    .map((r) => path.join(root, r));
}

/** Resolves every split's patterns; a split with no file at all is an error naming its patterns. */
async function resolveSplits(patterns: Record<string, string[]>, base: string): Promise<Record<string, string[]>> {
  const out: Record<string, string[]> = {};
  for (const [split, list] of Object.entries(patterns)) {
    const files: string[] = [];
    for (const p of list) files.push(...(await resolvePattern(p, base)));
    if (files.length === 0)
      throw new PeftNodeError(
        'ERR_FILE_NOT_FOUND',
        `no data files for split '${split}': nothing matches ${JSON.stringify(list)} in ${base}`,
      );
    out[split] = files;
  }
  return out;
}

/** The split → files mapping for `load_dataset(..., { data_dir, data_files })`. */
export async function resolve_data_files(opts: { data_dir?: string; data_files?: DataFiles }): Promise<Record<string, string[]>> {
  const base = path.resolve(opts.data_dir ?? '.');
  const df = opts.data_files;
  if (df !== undefined) {
    const patterns =
      typeof df === 'string' ? { train: [df] }
      : Array.isArray(df) ? { train: df }
      : Object.fromEntries(Object.entries(df).map(([k, v]) => [k, Array.isArray(v) ? v : [v]]));
    return resolveSplits(patterns, base);
  }
  if (opts.data_dir === undefined)
    throw new PeftNodeError('ERR_INVALID_INPUT', 'load_dataset("json") needs data_files or data_dir');
  const st = await fs.stat(base).catch(() => null);
  if (!st?.isDirectory()) throw new PeftNodeError('ERR_FILE_NOT_FOUND', `data_dir is not a directory: ${base}`);

  const files = (await listFiles(base)).filter((r) => !FILES_TO_IGNORE.includes(path.posix.basename(r)));
  const visible = (pattern: string): string[] => files.filter((r) => globToRegExp(pattern).test(r) && !isUnrequested(r, pattern));
  // 1. Sharded names: data/{split}-00000-of-00001.*
  const sharded = /^data\/(\w+(?:\.\w+)*)-\d{5}-of-\d{5}[^/]*\.[^/]*$/;
  const shardSplits = new Set<string>();
  for (const r of files) {
    const split = sharded.exec(r)?.[1];
    if (split !== undefined && !isUnrequested(r, 'data/*')) shardSplits.add(split);
  }
  if (shardSplits.size > 0) {
    const others = [...shardSplits].filter((s) => !DEFAULT_SPLITS.includes(s)).sort();
    const names = [...DEFAULT_SPLITS.filter((s) => shardSplits.has(s)), ...others];
    const digits5 = '[0-9]'.repeat(5);
    return resolveSplits(Object.fromEntries(names.map((s) => [s, [`data/${s}-${digits5}-of-${digits5}*.*`]])), base);
  }
  // 2. The first rule set under which some split has a file decides; each split keeps all of its patterns.
  for (const set of DEFAULT_PATTERN_SETS) {
    const found = Object.entries(set).filter(([, pats]) => pats.some((p) => visible(p).length > 0));
    if (found.length > 0) return resolveSplits(Object.fromEntries(found), base);
  }
  throw new PeftNodeError('ERR_FILE_NOT_FOUND', `no data files found in ${base}`);
}
