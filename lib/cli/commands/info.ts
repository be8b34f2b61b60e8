/**
 * `peft-node info PATH [--base DIR] [--json]`: what a model directory or an adapter directory holds, read from its
 * JSON files and safetensors headers only (nothing is loaded), and whether an adapter fits a base model.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Argv } from 'yargs';
import { PeftNodeError } from '../../errors';
import { BloomConfig } from '../../models/bloom/configuration_bloom';
import { PrefixTuningConfig } from '../../peft/config';
import { count_bloom_parameters, count_prefix_tuning_parameters, format_trainable_parameters } from '../../peft/peft_model';
import { Args, UsageError, format_bytes, out, require_model_dir, same_path, string_flag } from '../common';

export const command = 'info [path]';
export const describe = 'Describe a model directory or an adapter directory (and whether an adapter fits a base model)';

export function builder(y: Argv): Argv {
  return y
    .positional('path', { type: 'string', describe: 'a model directory (config.json) or an adapter directory (adapter_config.json)' })
    .option('base', { type: 'string', describe: 'for an adapter: check that it fits this base model directory' })
    .option('json', { type: 'boolean', describe: 'print JSON', default: false })
    .example('$0 info ./bloom-1b4-zh', 'architecture, sizes, parameter count, dtype, weight files, tokenizer')
    .example('$0 info ./peft-node-output/adapter --base ./bloom-1b4-zh', "an adapter's settings, and whether it fits that model")
    .example('$0 info ./chatbot/checkpoint-500 --json', 'machine-readable');
}

// ---------------------------------------------------------------------------------------------------------------

interface TensorEntry {
  name: string;
  dtype: string;
  shape: number[];
}

/** Tensor names, dtypes and shapes from a safetensors header (the data is not read). */
function safetensors_header(file: string): { tensors: TensorEntry[]; metadata: Record<string, string> | null } {
  const fd = fs.openSync(file, 'r');
  try {
    const size = fs.fstatSync(fd).size;
    const head = Buffer.alloc(8);
    if (size < 8 || fs.readSync(fd, head, 0, 8, 0) !== 8) throw new PeftNodeError('ERR_SAFETENSORS_HEADER', `${file}: truncated safetensors header`);
    const n = Number(head.readBigUInt64LE(0));
    if (n > 100_000_000 || 8 + n > size) throw new PeftNodeError('ERR_SAFETENSORS_HEADER', `${file}: header length ${n} is beyond the file`);
    const buf = Buffer.alloc(n);
    fs.readSync(fd, buf, 0, n, 8);
    let json: Record<string, unknown>;
    try {
      json = JSON.parse(buf.toString('utf8')) as Record<string, unknown>;
    } catch {
      throw new PeftNodeError('ERR_SAFETENSORS_HEADER', `${file}: the safetensors header is not JSON`);
    }
    const tensors: TensorEntry[] = [];
    for (const [name, v] of Object.entries(json)) {
      if (name === '__metadata__') continue;
      const t = v as { dtype?: string; shape?: number[] };
      tensors.push({ name, dtype: String(t.dtype), shape: Array.isArray(t.shape) ? t.shape : [] });
    }
    return { tensors, metadata: (json.__metadata__ as Record<string, string> | undefined) ?? null };
  } finally {
    fs.closeSync(fd);
  }
}

function readJson(file: string): Record<string, unknown> {
  let v: unknown;
  try {
    v = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (err) {
    throw new PeftNodeError('ERR_JSON', `${file} is not valid JSON: ${(err as Error).message}`);
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new PeftNodeError('ERR_CONFIG', `${file} must hold a JSON object`);
  return v as Record<string, unknown>;
}

const numel = (shape: number[]) => shape.reduce((a, b) => a * b, 1);
const n = (v: number) => v.toLocaleString('en-US');

function short_count(v: number): string {
  if (v >= 1e9) return `${(v / 1e9).toFixed(2)} B`;
  if (v >= 1e6) return `${(v / 1e6).toFixed(1)} M`;
  if (v >= 1e3) return `${(v / 1e3).toFixed(1)} K`;
  return String(v);
}

interface WeightFile {
  file: string;
  bytes: number;
  tensors: number | null;
  parameters: number | null;
  dtypes: string[];
}

function weight_file(dir: string, name: string): WeightFile {
  const file = path.join(dir, name);
  const bytes = fs.statSync(file).size;
  if (!name.endsWith('.safetensors')) return { file: name, bytes, tensors: null, parameters: null, dtypes: [] };
  const { tensors } = safetensors_header(file);
  return {
    file: name,
    bytes,
    tensors: tensors.length,
    parameters: tensors.reduce((s, t) => s + numel(t.shape), 0),
    dtypes: [...new Set(tensors.map((t) => t.dtype))].sort(),
  };
}

// ---------------------------------------------------------------------------------------------------------------
// A model directory

interface ModelInfo {
  kind: 'model';
  path: string;
  architectures: string[];
  model_type: string | null;
  supported: boolean;
  vocab_size: number | null;
  hidden_size: number | null;
  n_layer: number | null;
  n_head: number | null;
  tie_word_embeddings: boolean | null;
  parameters: number | null;
  dtype: string | null;
  weight_files: WeightFile[];
  tokenizer: { file: string; class: string | null; padding_side: string | null; eos_token: string | null; pad_token: string | null } | null;
  generation_config: boolean;
  prefix_tuning: { num_virtual_tokens: number; trainable_params: number; all_params: number; line: string } | null;
}

function token_string(v: unknown): string | null {
  if (typeof v === 'string') return v;
  if (v && typeof v === 'object' && typeof (v as { content?: unknown }).content === 'string') return (v as { content: string }).content;
  return null;
}

function model_info(dir: string): ModelInfo {
  const raw = readJson(path.join(dir, 'config.json'));
  const model_type = typeof raw.model_type === 'string' ? raw.model_type : null;
  const supported = model_type === 'bloom';
  const cfg = new BloomConfig(raw); // resolves BLOOM's aliases (n_embed, num_hidden_layers, ...)
  const num = (k: string, v: number) => (supported || typeof raw[k] === 'number' ? v : null);
  const files = fs.readdirSync(dir).sort();
  const weights = files.filter((f) => /\.(safetensors|bin|pt|pth|ckpt|h5|msgpack|gguf)$/.test(f) || f.endsWith('.safetensors.index.json'));
  const tokFile = files.includes('tokenizer.json') ? 'tokenizer.json' : null;
  const tokCfg = files.includes('tokenizer_config.json') ? readJson(path.join(dir, 'tokenizer_config.json')) : {};
  const specialMap = files.includes('special_tokens_map.json') ? readJson(path.join(dir, 'special_tokens_map.json')) : {};
  const tok = { ...tokCfg, ...specialMap };
  let prefix_tuning: ModelInfo['prefix_tuning'] = null;
  if (supported) {
    const P = 10;
    const [trainable, all] = count_prefix_tuning_parameters(cfg, new PrefixTuningConfig({ task_type: 'CAUSAL_LM', num_virtual_tokens: P }));
    prefix_tuning = { num_virtual_tokens: P, trainable_params: trainable, all_params: all, line: format_trainable_parameters(trainable, all) };
  }
  return {
    kind: 'model',
    path: dir,
    architectures: Array.isArray(raw.architectures) ? raw.architectures.map(String) : [],
    model_type,
    supported,
    vocab_size: num('vocab_size', cfg.vocab_size),
    hidden_size: num('hidden_size', cfg.hidden_size),
    n_layer: num('num_hidden_layers', cfg.n_layer),
    n_head: num('num_attention_heads', cfg.n_head),
    tie_word_embeddings: supported ? cfg.tie_word_embeddings : null,
    parameters: supported ? count_bloom_parameters(cfg) : null,
    dtype: cfg.dtype,
    weight_files: weights.filter((w) => !w.endsWith('.json')).map((w) => weight_file(dir, w)),
    tokenizer: tokFile
      ? {
          file: tokFile,
          class: typeof tok.tokenizer_class === 'string' ? tok.tokenizer_class : null,
          padding_side: typeof tok.padding_side === 'string' ? tok.padding_side : null,
          eos_token: token_string(tok.eos_token),
          pad_token: token_string(tok.pad_token),
        }
      : null,
    generation_config: files.includes('generation_config.json'),
    prefix_tuning,
  };
}

function print_model(m: ModelInfo): void {
  const row = (k: string, v: string) => out(`  ${k.padEnd(20)}${v}`);
  out(`${m.path}: a model${m.architectures.length ? ` (${m.architectures.join(', ')})` : ''}`);
  row('model_type', `${m.model_type ?? 'unknown'}${m.supported ? '' : ' (not supported: peft-node runs BLOOM, model_type "bloom")'}`);
  if (m.vocab_size !== null) row('vocab_size', n(m.vocab_size));
  if (m.hidden_size !== null) row('hidden_size', String(m.hidden_size));
  if (m.n_layer !== null) row('layers', String(m.n_layer));
  if (m.n_head !== null) row('attention heads', String(m.n_head));
  if (m.parameters !== null) row('parameters', `${n(m.parameters)} (${short_count(m.parameters)}, from config.json${m.tie_word_embeddings ? '; lm_head tied' : ''})`);
  row('dtype', m.dtype ?? 'not stated (float32)');
  if (m.weight_files.length === 0) row('weights', 'none found');
  for (const [i, w] of m.weight_files.entries())
    row(i === 0 ? 'weights' : '', `${w.file} (${format_bytes(w.bytes)}${w.tensors !== null ? `; ${w.tensors} tensors, ${n(w.parameters!)} values, ${w.dtypes.join('/')}` : ''})`);
  row('tokenizer', m.tokenizer
    ? `${m.tokenizer.file}${m.tokenizer.class ? ` (${m.tokenizer.class})` : ''}` +
      [m.tokenizer.padding_side && `padding_side ${m.tokenizer.padding_side}`, m.tokenizer.eos_token && `eos ${m.tokenizer.eos_token}`, m.tokenizer.pad_token && `pad ${m.tokenizer.pad_token}`]
        .filter(Boolean)
        .map((s) => `, ${s}`)
        .join('')
    : 'none (no tokenizer.json)');
  row('generation_config', m.generation_config ? 'generation_config.json' : 'none (defaults from config.json)');
  if (m.prefix_tuning) row('prefix tuning', `${m.prefix_tuning.line} (num_virtual_tokens ${m.prefix_tuning.num_virtual_tokens})`);
}

// ---------------------------------------------------------------------------------------------------------------
// An adapter directory

interface Fit {
  base: string;
  base_source: '--base' | 'base_model_name_or_path';
  fits: boolean;
  problems: string[];
  name_matches: boolean;
}

interface AdapterInfo {
  kind: 'adapter';
  path: string;
  peft_type: string | null;
  task_type: string | null;
  num_virtual_tokens: number | null;
  prefix_projection: boolean;
  encoder_hidden_size: number | null;
  num_layers: number | null;
  token_dim: number | null;
  num_attention_heads: number | null;
  inference_mode: boolean;
  base_model_name_or_path: string | null;
  peft_version: string | null;
  weights: { file: string; bytes: number; tensors: TensorEntry[] } | null;
  /** Trainable parameters when training with this config (get_peft_model), from the config alone. */
  trainable_params: number | null;
  /** With the base model's config: the total and the print_trainable_parameters line. */
  all_params: number | null;
  trainable_parameters_line: string | null;
  checkpoint: { global_step: number; epoch: number | null; max_steps: number } | null;
  fit: Fit | null;
}

function adapter_info(dir: string, baseFlag: string | undefined): AdapterInfo {
  const raw = readJson(path.join(dir, 'adapter_config.json'));
  const str = (k: string) => (typeof raw[k] === 'string' ? (raw[k] as string) : null);
  const int = (k: string) => (typeof raw[k] === 'number' ? (raw[k] as number) : null);
  const weightsFile = path.join(dir, 'adapter_model.safetensors');
  const weights = fs.existsSync(weightsFile)
    ? { file: 'adapter_model.safetensors', bytes: fs.statSync(weightsFile).size, tensors: safetensors_header(weightsFile).tensors }
    : null;
  const info: AdapterInfo = {
    kind: 'adapter',
    path: dir,
    peft_type: str('peft_type'),
    task_type: str('task_type'),
    num_virtual_tokens: int('num_virtual_tokens'),
    prefix_projection: raw.prefix_projection === true,
    encoder_hidden_size: int('encoder_hidden_size'),
    num_layers: int('num_layers'),
    token_dim: int('token_dim'),
    num_attention_heads: int('num_attention_heads'),
    inference_mode: raw.inference_mode === true,
    base_model_name_or_path: str('base_model_name_or_path'),
    peft_version: str('peft_version'),
    weights,
    trainable_params: null,
    all_params: null,
    trainable_parameters_line: null,
    checkpoint: null,
    fit: null,
  };
  const statePath = path.join(dir, 'trainer_state.json');
  if (fs.existsSync(statePath)) {
    const st = readJson(statePath);
    info.checkpoint = {
      global_step: Number(st.global_step ?? 0),
      epoch: typeof st.epoch === 'number' ? st.epoch : null,
      max_steps: Number(st.max_steps ?? 0),
    };
  }
  const isPrefix = info.peft_type === 'PREFIX_TUNING';
  const P = info.num_virtual_tokens, L = info.num_layers, D = info.token_dim;
  if (isPrefix && P !== null && L !== null && D !== null) {
    const W = 2 * L * D;
    const E = info.encoder_hidden_size ?? D;
    info.trainable_params = info.prefix_projection ? P * D + E * D + E + W * E + W : P * W;
  }

  // The base model: --base, else base_model_name_or_path when it is a local directory.
  let base: string | undefined;
  let source: Fit['base_source'] = '--base';
  if (baseFlag !== undefined) base = require_model_dir(baseFlag);
  else if (info.base_model_name_or_path && fs.existsSync(path.join(info.base_model_name_or_path, 'config.json'))) {
    base = info.base_model_name_or_path;
    source = 'base_model_name_or_path';
  }
  if (base === undefined) return info;
  const raw_base = readJson(path.join(base, 'config.json'));
  const problems: string[] = [];
  if (raw_base.model_type !== 'bloom') problems.push(`the base model's model_type is ${JSON.stringify(raw_base.model_type ?? null)}, not "bloom"`);
  if (!isPrefix) problems.push(`peft_type is ${info.peft_type ?? 'missing'}: peft-node loads PREFIX_TUNING adapters`);
  if (info.task_type !== null && info.task_type !== 'CAUSAL_LM') problems.push(`task_type is ${info.task_type}, not CAUSAL_LM`);
  const cfg = new BloomConfig(raw_base);
  const cmp = (what: string, mine: number | null, theirs: number, key: string) => {
    if (mine !== null && mine !== theirs) problems.push(`${what}: adapter ${mine}, base model ${theirs} (${key})`);
  };
  cmp('num_layers', L, cfg.n_layer, 'n_layer');
  cmp('token_dim', D, cfg.hidden_size, 'hidden_size');
  cmp('num_attention_heads', info.num_attention_heads, cfg.n_head, 'n_head');
  const emb = weights?.tensors.find((t) => t.name === 'prompt_embeddings');
  if (!weights) problems.push('adapter_model.safetensors is missing');
  else if (!emb) problems.push('adapter_model.safetensors has no prompt_embeddings tensor');
  else if (P !== null && (emb.shape.length !== 2 || emb.shape[0] !== P || emb.shape[1] !== 2 * cfg.n_layer * cfg.hidden_size))
    problems.push(`prompt_embeddings has shape [${emb.shape.join(', ')}], the base model needs [${P}, ${2 * cfg.n_layer * cfg.hidden_size}]`);
  const name = info.base_model_name_or_path;
  const name_matches = name !== null && (name === base || same_path(name, base) || path.basename(path.resolve(name)) === path.basename(path.resolve(base)));
  info.fit = { base, base_source: source, fits: problems.length === 0, problems, name_matches };
  if (isPrefix && problems.length === 0 && P !== null) {
    const config = new PrefixTuningConfig({
      task_type: 'CAUSAL_LM',
      num_virtual_tokens: P,
      prefix_projection: info.prefix_projection,
      ...(info.encoder_hidden_size !== null ? { encoder_hidden_size: info.encoder_hidden_size } : {}),
    });
    const [trainable, all] = count_prefix_tuning_parameters(cfg, config);
    info.trainable_params = trainable;
    info.all_params = all;
    info.trainable_parameters_line = format_trainable_parameters(trainable, all);
  }
  return info;
}

function print_adapter(a: AdapterInfo): void {
  const row = (k: string, v: string) => out(`  ${k.padEnd(26)}${v}`);
  out(`${a.path}: ${a.checkpoint ? 'a training checkpoint holding an adapter' : 'an adapter'}`);
  row('peft_type', `${a.peft_type ?? 'missing'}${a.peft_type === 'PREFIX_TUNING' ? '' : ' (peft-node loads PREFIX_TUNING adapters)'}`);
  row('task_type', a.task_type ?? 'missing');
  row('num_virtual_tokens', String(a.num_virtual_tokens ?? 'missing'));
  row('prefix_projection', a.prefix_projection ? `true (MLP hidden size ${a.encoder_hidden_size ?? a.token_dim}; the file holds its output prefix)` : 'false');
  row('layers', String(a.num_layers ?? 'missing'));
  row('token_dim', String(a.token_dim ?? 'missing'));
  row('attention heads', String(a.num_attention_heads ?? 'missing'));
  row('base_model_name_or_path', a.base_model_name_or_path ?? 'missing');
  if (a.peft_version) row('peft_version', a.peft_version);
  if (a.weights)
    row('weights', `${a.weights.file} (${format_bytes(a.weights.bytes)}; ${a.weights.tensors.map((t) => `${t.name} ${t.dtype} [${t.shape.join(', ')}]`).join(', ')})`);
  else row('weights', 'adapter_model.safetensors missing');
  if (a.checkpoint) row('checkpoint', `step ${a.checkpoint.global_step} of ${a.checkpoint.max_steps}${a.checkpoint.epoch !== null ? `, epoch ${Number(a.checkpoint.epoch.toFixed(4))}` : ''}`);
  if (a.trainable_parameters_line) row('when trained', a.trainable_parameters_line);
  else if (a.trainable_params !== null)
    row('when trained', `trainable params: ${n(a.trainable_params)} (all params: ${a.fit ? 'needs a base model it fits' : 'pass --base DIR'})`);
  if (a.fit) {
    const f = a.fit;
    const label = f.base_source === '--base' ? 'fits --base' : 'fits its base model';
    if (f.fits) row(label, `yes: ${f.base} (layers, hidden size and heads match)`);
    else {
      row(label, `NO: ${f.base}`);
      for (const p of f.problems) row('', `- ${p}`);
    }
    row('base name', f.name_matches ? `matches (${a.base_model_name_or_path})` : `differs: trained on ${a.base_model_name_or_path ?? 'an unnamed model'}`);
  }
}

// ---------------------------------------------------------------------------------------------------------------

export async function handler(args: Args): Promise<number> {
  const p = string_flag(args, 'path');
  if (p === undefined) throw new UsageError('a path is needed: peft-node info PATH');
  const base = string_flag(args, 'base');
  if (!fs.existsSync(p)) throw new PeftNodeError('ERR_FILE_NOT_FOUND', `not found: ${p}`);
  if (!fs.statSync(p).isDirectory()) throw new PeftNodeError('ERR_INVALID_INPUT', `${p} is a file: pass a model or adapter directory`);
  const isAdapter = fs.existsSync(path.join(p, 'adapter_config.json'));
  const isModel = fs.existsSync(path.join(p, 'config.json'));
  if (!isAdapter && !isModel) {
    const inside = fs
      .readdirSync(p)
      .filter((e) => fs.existsSync(path.join(p, e, 'adapter_config.json')) || fs.existsSync(path.join(p, e, 'config.json')));
    throw new PeftNodeError(
      'ERR_FILE_NOT_FOUND',
      `${p} holds neither config.json (a model) nor adapter_config.json (an adapter)` + (inside.length ? `; inside it: ${inside.map((e) => path.join(p, e)).join(', ')}` : ''),
    );
  }
  if (base !== undefined && !isAdapter) throw new UsageError('--base applies to an adapter directory');
  const info = isAdapter ? adapter_info(p, base) : model_info(p);
  if (args.json === true) out(JSON.stringify(info, null, 2));
  else if (info.kind === 'adapter') print_adapter(info);
  else print_model(info);
  return 0;
}
