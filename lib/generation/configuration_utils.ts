/** GenerationConfig: transformers' generation defaults, overridden by a checkpoint's generation_config.json. */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { PeftNodeError } from '../errors';
import { readJsonObject } from '../utils/python_json';

const isInt = (v: unknown) => Number.isSafeInteger(v) && (v as number) >= 0;
const isNum = (v: unknown) => typeof v === 'number' && !Number.isNaN(v);
/** Types of generation_config.json values (null = unset is always fine); ranges are checked by generate(). */
const FIELD_CHECKS: Partial<Record<keyof GenerationConfigFields, [(v: unknown) => boolean, string]>> = {
  max_length: [isInt, 'an integer >= 0'],
  max_new_tokens: [isInt, 'null or an integer >= 0'],
  do_sample: [(v) => typeof v === 'boolean', 'a boolean'],
  temperature: [isNum, 'a number'],
  top_k: [isInt, 'an integer >= 0'],
  top_p: [isNum, 'a number'],
  repetition_penalty: [isNum, 'a number'],
  bos_token_id: [isInt, 'null or a token id'],
  eos_token_id: [(v) => isInt(v) || (Array.isArray(v) && v.every(isInt)), 'null, a token id or a list of token ids'],
  pad_token_id: [isInt, 'null or a token id'],
};
const NULLABLE = new Set(['max_new_tokens', 'bos_token_id', 'eos_token_id', 'pad_token_id']);

export interface GenerationConfigFields {
  max_length: number;
  max_new_tokens: number | null;
  do_sample: boolean;
  temperature: number;
  top_k: number;
  top_p: number;
  repetition_penalty: number;
  bos_token_id: number | null;
  eos_token_id: number | number[] | null;
  pad_token_id: number | null;
}

export class GenerationConfig implements GenerationConfigFields {
  max_length = 20;
  max_new_tokens: number | null = null;
  do_sample = false;
  temperature = 1.0;
  top_k = 50;
  top_p = 1.0;
  repetition_penalty = 1.0;
  bos_token_id: number | null = null;
  eos_token_id: number | number[] | null = null;
  pad_token_id: number | null = null;

  constructor(fields: Partial<GenerationConfigFields> = {}) {
    for (const [k, v] of Object.entries(fields))
      if (Object.prototype.hasOwnProperty.call(this, k) && v !== undefined) (this as Record<string, unknown>)[k] = v;
  }

  /** `<dir>/generation_config.json` if present, else the token ids of config.json (as transformers does). */
  static from_model_dir(dir: string, modelConfig: Record<string, unknown>): GenerationConfig {
    const file = path.join(dir, 'generation_config.json');
    const pick = (o: Record<string, unknown>) =>
      Object.fromEntries(Object.entries(o).filter(([k]) => FIELD_NAMES.has(k))) as Partial<GenerationConfigFields>;
    if (fs.existsSync(file)) {
      const raw = readJsonObject(file, { python_literals: true });
      const fields = pick(raw);
      for (const [k, v] of Object.entries(fields)) {
        const check = FIELD_CHECKS[k as keyof GenerationConfigFields]; // k is a field name (see pick)
        if (v !== null && check && !check[0](v))
          throw new PeftNodeError('ERR_CONFIG', `${file}: '${k}' must be ${check[1]}, got ${String(JSON.stringify(v)).slice(0, 80)}`);
      }
      // null means "unset" in transformers' files: keep the defaults.
      return new GenerationConfig(Object.fromEntries(Object.entries(fields).filter(([k, v]) => v !== null || NULLABLE.has(k))));
    }
    const ids = ['bos_token_id', 'eos_token_id', 'pad_token_id'].filter((k) => typeof modelConfig[k] === 'number');
    return new GenerationConfig(pick(Object.fromEntries(ids.map((k) => [k, modelConfig[k]]))));
  }
}

const FIELD_NAMES: ReadonlySet<string> = new Set(Object.keys(new GenerationConfig()));
