/**
 * What the CLI commands share: the embedded demo assets, the cache holding "the last adapter", the Human/Assistant
 * template of the seed notebook, flag validation (a bad value is a {@link UsageError}: exit code 2) and path checks
 * (a missing file is a PeftNodeError ERR_FILE_NOT_FOUND: exit code 1).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Argv } from 'yargs';
import { PeftNodeError } from '../errors';
import type { AttnImplementation, FromPretrainedOptions } from '../models/bloom/modeling_bloom';
import { cacheBase } from '../runtime/libtorch';
import { PACKAGE_ROOT } from '../runtime/native';
import { writeFileAtomic } from '../utils/fs_atomic';

export { PACKAGE_ROOT };

/** The embedded tiny random BLOOM (+ tokenizer) that `peft-node train` / `generate` use without `--model`. */
export const EMBEDDED_MODEL = path.join(PACKAGE_ROOT, 'assets', 'tiny-bloom');
/** The embedded alpaca-shaped demo rows that `peft-node train` uses without `--data`. */
export const EMBEDDED_DATA = path.join(PACKAGE_ROOT, 'assets', 'data', 'demo_zh_en.json');

/** A bad command line (unknown flag, invalid value, missing argument): printed as one line, exit code 2. */
export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

/** Parsed arguments as yargs hands them to a handler (kebab-case and camelCase keys), plus the raw argv. */
export type Args = Record<string, unknown>;

/** Key of the command line as typed (string[]) in {@link Args}. */
export const RAW_ARGV = '$argv';

let outputClosed = false;

/** Called when stdout's reader went away (EPIPE): commands stop producing output. */
export function mark_output_closed(): void {
  outputClosed = true;
}

export function output_closed(): boolean {
  return outputClosed;
}

/** Text to stdout (dropped once its reader has gone). */
export function write(text: string): void {
  if (!outputClosed) process.stdout.write(text);
}

/** Lines for humans: stdout. */
export function out(line = ''): void {
  write(`${line}\n`);
}

/** Notes and warnings: stderr, prefixed like every peft-node message. */
export function note(line: string): void {
  process.stderr.write(`peft-node: ${line}\n`);
}

// ---------------------------------------------------------------------------------------------------------------
// The seed notebook's prompt template

/** Template names of `--template`. */
export const TEMPLATES = ['human-assistant', 'none'] as const;
export type TemplateName = (typeof TEMPLATES)[number];

/**
 * The seed's prompt: `"\n".join(["Human: " + instruction, input]).strip() + "\n\nAssistant: "`. With an empty input
 * this is `Human: {instruction}\n\nAssistant: `, the form generate and chat use.
 */
export function human_assistant_prompt(instruction: string, input = ''): string {
  return ['Human: ' + instruction, input].join('\n').trim() + '\n\nAssistant: ';
}

export function apply_template(template: TemplateName, prompt: string): string {
  return template === 'human-assistant' ? human_assistant_prompt(prompt) : prompt;
}

// ---------------------------------------------------------------------------------------------------------------
// The cache: ${PEFT_NODE_CACHE:-${XDG_CACHE_HOME:-~/.cache}/peft-node} (scripts/libtorch/facts.js's cacheBase; libtorch
// and the addon's test-load verdicts live below it too)

export function cache_dir(env: NodeJS.ProcessEnv = process.env): string {
  return cacheBase(env);
}

export function last_adapter_file(env: NodeJS.ProcessEnv = process.env): string {
  return path.join(cache_dir(env), 'last_adapter.json');
}

/** What `peft-node train` records about the adapter it saved last. Paths are absolute. */
export interface LastAdapter {
  adapter: string;
  base_model: string;
  output_dir: string;
  global_step: number;
  training_loss: number;
  created: string;
}

export function write_last_adapter(record: LastAdapter): string {
  const file = last_adapter_file();
  fs.mkdirSync(path.dirname(file), { recursive: true });
  writeFileAtomic(file, JSON.stringify(record, null, 2) + '\n');
  return file;
}

/** The last adapter, or null when none was recorded or the file is unreadable (reported through `warn`). */
export function read_last_adapter(warn: (msg: string) => void = note): LastAdapter | null {
  const file = last_adapter_file();
  if (!fs.existsSync(file)) return null;
  try {
    const v = JSON.parse(fs.readFileSync(file, 'utf8')) as Partial<LastAdapter>;
    if (typeof v.adapter !== 'string' || typeof v.base_model !== 'string') throw new Error('no "adapter" / "base_model" path');
    return v as LastAdapter;
  } catch (err) {
    warn(`ignoring ${file}: ${(err as Error).message}`);
    return null;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Paths

function missing(what: string, p: string, hint = ''): PeftNodeError {
  return new PeftNodeError('ERR_FILE_NOT_FOUND', `${what} not found: ${p}${hint}`);
}

/** An existing directory, else ERR_FILE_NOT_FOUND naming it. */
export function require_dir(p: string, what: string): string {
  if (!fs.existsSync(p)) throw missing(what, p);
  if (!fs.statSync(p).isDirectory()) throw new PeftNodeError('ERR_FILE_NOT_FOUND', `not a directory: ${p} (expected a ${what})`);
  return p;
}

/** A model directory: exists and holds config.json. */
export function require_model_dir(p: string): string {
  require_dir(p, 'model directory');
  if (!fs.existsSync(path.join(p, 'config.json'))) throw missing('config.json', path.join(p, 'config.json'), ' (is this a model directory?)');
  return p;
}

/** An adapter directory: exists and holds adapter_config.json. */
export function require_adapter_dir(p: string): string {
  require_dir(p, 'adapter directory');
  if (!fs.existsSync(path.join(p, 'adapter_config.json')))
    throw missing('adapter_config.json', path.join(p, 'adapter_config.json'), ' (is this an adapter directory?)');
  return p;
}

export function same_path(a: string, b: string): boolean {
  const real = (p: string) => {
    try {
      return fs.realpathSync(p);
    } catch {
      return path.resolve(p);
    }
  };
  return real(a) === real(b);
}

// ---------------------------------------------------------------------------------------------------------------
// Flag validation: yargs parses, these check values (a bad one is a UsageError naming the flag)

function shown(v: unknown): string {
  return typeof v === 'string' ? JSON.stringify(v) : Number.isNaN(v) || v === null ? 'not a number' : String(v);
}

function flagNumber(args: Args, flag: string): number | undefined {
  const v = args[flag];
  if (v === undefined) return undefined;
  if (typeof v !== 'number' || !Number.isFinite(v))
    throw new UsageError(`--${flag} must be a number${(typeof v === 'number' && Number.isNaN(v)) || v === null ? '' : `, got ${shown(v)}`}`);
  return v;
}

/** An integer flag in [min, ∞). */
export function int_flag(args: Args, flag: string, min: number): number | undefined {
  const v = flagNumber(args, flag);
  if (v !== undefined && (!Number.isSafeInteger(v) || v < min))
    throw new UsageError(`--${flag} must be an integer >= ${min}, got ${shown(v)}`);
  return v;
}

/** A number flag > 0 (or >= 0 with allowZero). */
export function positive_flag(args: Args, flag: string, allowZero = false): number | undefined {
  const v = flagNumber(args, flag);
  if (v !== undefined && (allowZero ? v < 0 : v <= 0)) throw new UsageError(`--${flag} must be ${allowZero ? '>= 0' : '> 0'}, got ${shown(v)}`);
  return v;
}

/** A number flag in (lo, hi]. */
export function range_flag(args: Args, flag: string, lo: number, hi: number): number | undefined {
  const v = flagNumber(args, flag);
  if (v !== undefined && !(v > lo && v <= hi)) throw new UsageError(`--${flag} must be in (${lo}, ${hi}], got ${shown(v)}`);
  return v;
}

/** HF's `logging_steps` / `save_steps`: a positive integer, or a fraction in (0, 1) of the total steps. */
export function steps_flag(args: Args, flag: string): number | undefined {
  const v = flagNumber(args, flag);
  if (v !== undefined && !(v > 0 && (v < 1 || Number.isSafeInteger(v))))
    throw new UsageError(`--${flag} must be a positive integer, or a fraction in (0, 1) of the total steps, got ${shown(v)}`);
  return v;
}

/** A string flag (non-empty when given). */
export function string_flag(args: Args, flag: string): string | undefined {
  const v = args[flag];
  if (v === undefined) return undefined;
  if (typeof v !== 'string' || v === '') throw new UsageError(`--${flag} needs a value`);
  return v;
}

// ---------------------------------------------------------------------------------------------------------------
// Options shared by several commands

export const DTYPES = ['auto', 'float32', 'bfloat16', 'float16', 'float64'] as const;

/** --device / --dtype (from_pretrained's options). */
export function model_options<T>(y: Argv<T>): Argv<T> {
  return y
    .option('device', {
      type: 'string',
      describe: 'cpu, cuda, cuda:N, or auto (CUDA when available)',
      default: 'cpu',
    })
    .option('dtype', {
      type: 'string',
      choices: DTYPES as unknown as string[],
      describe: "weights' dtype; auto = the checkpoint's",
      default: 'auto',
    })
    .option('attn-implementation', {
      type: 'string',
      choices: ['eager', 'sdpa'],
      describe: 'eager: transformers\' attention, bit-exact with PEFT; sdpa: one fused kernel (float32, faster, other rounding)',
      default: 'eager',
    });
}

/** from_pretrained's options from --device, --dtype and --attn-implementation. */
export function model_load_flags(args: Args): FromPretrainedOptions {
  return {
    device: device_flag(args),
    dtype: string_flag(args, 'dtype') ?? 'auto',
    attn_implementation: (string_flag(args, 'attn-implementation') ?? 'eager') as AttnImplementation,
  };
}

export function device_flag(args: Args): string {
  const d = string_flag(args, 'device') ?? 'cpu';
  if (!/^(cpu|auto|cuda(:\d+)?)$/.test(d)) throw new UsageError(`--device must be cpu, cuda, cuda:N or auto, got ${JSON.stringify(d)}`);
  return d;
}

/** --max-new-tokens --do-sample --temperature --top-k --top-p --repetition-penalty --seed. */
export function generation_options<T>(y: Argv<T>): Argv<T> {
  return y
    .option('max-new-tokens', { type: 'number', describe: 'tokens to generate at most', default: 128 })
    .option('do-sample', { type: 'boolean', describe: 'sample instead of greedy decoding', default: false })
    .option('temperature', { type: 'number', describe: "sampling temperature (default: the model's generation_config, 1.0)" })
    .option('top-k', { type: 'number', describe: 'sampling: keep the k most likely tokens (0 = all; default 50)' })
    .option('top-p', { type: 'number', describe: 'sampling: nucleus probability in (0, 1] (default 1.0)' })
    .option('repetition-penalty', { type: 'number', describe: 'penalty > 0 for repeated tokens (1.0 = none)' })
    .option('seed', { type: 'number', describe: 'seed for sampling: the same seed gives the same text' });
}

export interface GenerationFlags {
  max_new_tokens: number;
  do_sample: boolean;
  temperature?: number;
  top_k?: number;
  top_p?: number;
  repetition_penalty?: number;
  seed?: number;
}

export function generation_flags(args: Args): GenerationFlags {
  return {
    max_new_tokens: int_flag(args, 'max-new-tokens', 0) ?? 128,
    do_sample: args['do-sample'] === true,
    temperature: positive_flag(args, 'temperature'),
    top_k: int_flag(args, 'top-k', 0),
    top_p: range_flag(args, 'top-p', 0, 1),
    repetition_penalty: positive_flag(args, 'repetition-penalty'),
    seed: int_flag(args, 'seed', 0),
  };
}

/** `--adapter DIR` / `--no-adapter` (false) / not given (undefined: the last adapter). */
export function adapter_flag(args: Args): string | false | undefined {
  const v = args.adapter;
  if (v === undefined || v === false) return v as undefined | false;
  if (typeof v !== 'string' || v === '') throw new UsageError('--adapter needs a directory (or use --no-adapter)');
  return v;
}

export function adapter_options<T>(y: Argv<T>): Argv<T> {
  return y
    .option('model', { type: 'string', describe: 'base model directory (default: the last adapter\'s base model, else the embedded tiny BLOOM)' })
    .option('adapter', {
      type: 'string',
      describe: 'prefix-tuning adapter directory (default: the last one `peft-node train` saved; --no-adapter: none)',
    });
}

/** Human-readable byte counts (1024-based, as `ls -h`). */
export function format_bytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${n} B` : `${v.toFixed(v < 10 ? 2 : 1)} ${units[i]}`;
}
