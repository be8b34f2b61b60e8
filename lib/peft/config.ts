/**
 * PEFT's enums and PrefixTuningConfig (peft/config.py, peft/tuners/prefix_tuning/config.py, version 0.21): every
 * field with its default, validation with named errors, and adapter_config.json exactly as PEFT writes it.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { PeftNodeError, repr } from '../errors';
import { writeFileAtomic } from '../utils/fs_atomic';
import { pythonJsonDumps, readJsonObject } from '../utils/python_json';

/** The PEFT version whose adapter format peft-node writes (`peft_version` in adapter_config.json). */
export const PEFT_FORMAT_VERSION = '0.21.0';
export const CONFIG_NAME = 'adapter_config.json';

/** PEFT's TaskType. */
export const TaskType = {
  SEQ_CLS: 'SEQ_CLS',
  SEQ_2_SEQ_LM: 'SEQ_2_SEQ_LM',
  CAUSAL_LM: 'CAUSAL_LM',
  TOKEN_CLS: 'TOKEN_CLS',
  QUESTION_ANS: 'QUESTION_ANS',
  FEATURE_EXTRACTION: 'FEATURE_EXTRACTION',
} as const;
export type TaskType = (typeof TaskType)[keyof typeof TaskType];

/** PEFT's PeftType (0.21). peft-node implements PREFIX_TUNING; the others are listed to name them in errors. */
export const PeftType = {
  PROMPT_TUNING: 'PROMPT_TUNING', MULTITASK_PROMPT_TUNING: 'MULTITASK_PROMPT_TUNING', P_TUNING: 'P_TUNING',
  PREFIX_TUNING: 'PREFIX_TUNING', LORA: 'LORA', ADALORA: 'ADALORA', ADAMSS: 'ADAMSS', BOFT: 'BOFT',
  ADAPTION_PROMPT: 'ADAPTION_PROMPT', IA3: 'IA3', BEFT: 'BEFT', LILY: 'LILY', LOHA: 'LOHA', LOKR: 'LOKR', OFT: 'OFT',
  POLY: 'POLY', LN_TUNING: 'LN_TUNING', VERA: 'VERA', FROD: 'FROD', PVERA: 'PVERA', FOURIERFT: 'FOURIERFT',
  GLORA: 'GLORA', XLORA: 'XLORA', HRA: 'HRA', VBLORA: 'VBLORA', UNILORA: 'UNILORA', CPT: 'CPT', MISS: 'MISS',
  RANDLORA: 'RANDLORA', ROAD: 'ROAD', TRAINABLE_TOKENS: 'TRAINABLE_TOKENS', HIRA: 'HIRA', SHIRA: 'SHIRA', C3A: 'C3A',
  WAVEFT: 'WAVEFT', OSF: 'OSF', DELORA: 'DELORA', GRALORA: 'GRALORA', CARTRIDGE: 'CARTRIDGE', TINYLORA: 'TINYLORA',
  PSOFT: 'PSOFT', PEANUT: 'PEANUT', SHADOW: 'SHADOW', SUPERTUNING: 'SUPERTUNING', DEFT: 'DEFT',
} as const;
export type PeftType = (typeof PeftType)[keyof typeof PeftType];

/** The fields of PrefixTuningConfig (PEFT 0.21), with Python's names. */
export interface PrefixTuningConfigFields {
  task_type: TaskType | null;
  peft_type: PeftType | null;
  auto_mapping: Record<string, unknown> | null;
  peft_version: string | null;
  base_model_name_or_path: string | null;
  revision: string | null;
  inference_mode: boolean;
  num_virtual_tokens: number | null;
  token_dim: number | null;
  num_transformer_submodules: number | null;
  num_attention_heads: number | null;
  num_layers: number | null;
  modules_to_save: string[] | null;
  init_weights: 'zero' | null;
  encoder_hidden_size: number | null;
  prefix_projection: boolean;
}

const DEFAULTS: PrefixTuningConfigFields = {
  task_type: null,
  peft_type: null,
  auto_mapping: null,
  peft_version: null,
  base_model_name_or_path: null,
  revision: null,
  inference_mode: false,
  num_virtual_tokens: null,
  token_dim: null,
  num_transformer_submodules: null,
  num_attention_heads: null,
  num_layers: null,
  modules_to_save: null,
  init_weights: null,
  encoder_hidden_size: null,
  prefix_projection: false,
};
const FIELD_NAMES = Object.keys(DEFAULTS) as (keyof PrefixTuningConfigFields)[];

function editDistance(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) => [i, ...new Array<number>(b.length).fill(0)]);
  for (let j = 1; j <= b.length; j++) d[0][j] = j;
  for (let i = 1; i <= a.length; i++)
    for (let j = 1; j <= b.length; j++)
      d[i][j] = Math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
  return d[a.length][b.length];
}

function invalid(message: string): PeftNodeError {
  return new PeftNodeError('ERR_CONFIG', `PrefixTuningConfig: ${message}`);
}

function checkPositiveInt(name: string, v: unknown): void {
  if (v !== null && (typeof v !== 'number' || !Number.isSafeInteger(v) || v <= 0))
    throw invalid(`${name} must be a positive integer${v === null ? '' : `, got ${repr(v)}`}`);
}

export class PrefixTuningConfig implements PrefixTuningConfigFields {
  task_type!: TaskType | null;
  peft_type!: PeftType | null;
  auto_mapping!: Record<string, unknown> | null;
  peft_version!: string | null;
  base_model_name_or_path!: string | null;
  revision!: string | null;
  inference_mode!: boolean;
  num_virtual_tokens!: number | null;
  token_dim!: number | null;
  num_transformer_submodules!: number | null;
  num_attention_heads!: number | null;
  num_layers!: number | null;
  modules_to_save!: string[] | null;
  init_weights!: 'zero' | null;
  encoder_hidden_size!: number | null;
  prefix_projection!: boolean;

  /**
   * Like PEFT's `PrefixTuningConfig(**kwargs)`. An unknown option name is an error (typos never pass silently); values
   * are validated here, and model-derived fields (token_dim, num_layers, …) are filled by `get_peft_model`.
   */
  constructor(options: Partial<PrefixTuningConfigFields> = {}) {
    if (typeof options !== 'object' || options === null || Array.isArray(options))
      throw invalid('options must be an object');
    for (const key of Object.keys(options)) {
      if (!(FIELD_NAMES as string[]).includes(key)) {
        const best = FIELD_NAMES.map((f) => [f, editDistance(key, f)] as const).sort((a, b) => a[1] - b[1])[0];
        throw invalid(
          `unknown option '${key}'` + (best[1] <= 3 ? ` (did you mean '${best[0]}'?)` : '') +
            `; valid options: ${FIELD_NAMES.join(', ')}`,
        );
      }
    }
    Object.assign(this, DEFAULTS, options);
    if (this.task_type !== null && !(Object.values(TaskType) as string[]).includes(this.task_type))
      throw invalid(`invalid task_type '${this.task_type}'; valid task types: ${Object.values(TaskType).join(', ')}`);
    if (this.peft_type !== null && this.peft_type !== PeftType.PREFIX_TUNING)
      throw invalid(`peft_type must be PREFIX_TUNING, got '${this.peft_type}'`);
    this.peft_type = PeftType.PREFIX_TUNING; // PEFT's __post_init__ forces it
    if (this.peft_version === null) this.peft_version = PEFT_FORMAT_VERSION;
    if (this.base_model_name_or_path === '') this.base_model_name_or_path = null;
    for (const k of ['num_virtual_tokens', 'token_dim', 'num_transformer_submodules', 'num_attention_heads', 'num_layers', 'encoder_hidden_size'] as const)
      checkPositiveInt(k, this[k]);
    for (const k of ['inference_mode', 'prefix_projection'] as const)
      if (typeof this[k] !== 'boolean') throw invalid(`${k} must be a boolean, got ${repr(this[k])}`);
    if (this.init_weights !== null && this.init_weights !== 'zero')
      throw invalid(`init_weights must be null or "zero", got ${repr(this.init_weights)}`);
    for (const k of ['peft_version', 'base_model_name_or_path', 'revision'] as const)
      if (this[k] !== null && typeof this[k] !== 'string') throw invalid(`${k} must be a string or null`);
    if (this.modules_to_save !== null && (!Array.isArray(this.modules_to_save) || this.modules_to_save.some((m) => typeof m !== 'string')))
      throw invalid('modules_to_save must be null or an array of module names');
    if (this.auto_mapping !== null && (typeof this.auto_mapping !== 'object' || Array.isArray(this.auto_mapping)))
      throw invalid('auto_mapping must be null or an object');
  }

  /** Prompt-learning methods (prefix tuning is one) — PEFT's `is_prompt_learning`. */
  get is_prompt_learning(): boolean {
    return true;
  }

  /** Every field, as Python's `dataclasses.asdict`. */
  to_dict(): PrefixTuningConfigFields {
    const out = {} as Record<string, unknown>;
    for (const k of FIELD_NAMES) {
      const v = this[k];
      out[k] = Array.isArray(v) ? [...v] : v !== null && typeof v === 'object' ? { ...v } : v;
    }
    return out as unknown as PrefixTuningConfigFields;
  }

  /** adapter_config.json's text as PEFT writes it: `json.dumps(to_dict(), indent=2, sort_keys=True)`, no newline. */
  to_json_string(): string {
    return pythonJsonDumps(this.to_dict(), { indent: 2, sort_keys: true });
  }

  /** Writes `<dir>/adapter_config.json` (atomically). */
  save_pretrained(dir: string): void {
    if (fs.existsSync(dir) && !fs.statSync(dir).isDirectory())
      throw new PeftNodeError('ERR_IO', `Provided path (${dir}) should be a directory, not a file`);
    fs.mkdirSync(dir, { recursive: true });
    writeFileAtomic(path.join(dir, CONFIG_NAME), this.to_json_string());
  }

  /**
   * Reads `<dir>/adapter_config.json`. Unlike the constructor, keys this version does not know are ignored with a
   * warning (a file from a newer PEFT), as PEFT does; a non-PREFIX_TUNING adapter is refused, naming its type.
   */
  static from_pretrained(dir: string): PrefixTuningConfig {
    const file = path.join(dir, CONFIG_NAME);
    if (!fs.existsSync(file)) throw new PeftNodeError('ERR_FILE_NOT_FOUND', `adapter config not found: ${file}`);
    const raw = readJsonObject(file);
    const obj = raw as Record<string, unknown>;
    if (obj.peft_type !== PeftType.PREFIX_TUNING)
      throw new PeftNodeError(
        'ERR_UNSUPPORTED_ADAPTER',
        `${file} describes a ${String(obj.peft_type ?? 'unknown')} adapter; peft-node loads PREFIX_TUNING adapters only`,
      );
    const known: Partial<PrefixTuningConfigFields> = {};
    const unknown: string[] = [];
    for (const [k, v] of Object.entries(obj)) {
      if ((FIELD_NAMES as string[]).includes(k)) (known as Record<string, unknown>)[k] = v;
      else unknown.push(k);
    }
    if (unknown.length)
      process.emitWarning(
        `Unexpected keys ${JSON.stringify(unknown.sort())} in ${file} are ignored (written by a newer PEFT?)`,
        'PeftNodeWarning',
      );
    try {
      return new PrefixTuningConfig(known);
    } catch (err) {
      throw new PeftNodeError('ERR_CONFIG', `${file}: ${(err as Error).message}`);
    }
  }
}
