/** GenerationConfig: transformers' generation defaults, overridden by a checkpoint's generation_config.json. */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { PeftNodeError } from '../errors';

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
    for (const [k, v] of Object.entries(fields)) if (k in this && v !== undefined) (this as Record<string, unknown>)[k] = v;
  }

  /** `<dir>/generation_config.json` if present, else the token ids of config.json (as transformers does). */
  static from_model_dir(dir: string, modelConfig: Record<string, unknown>): GenerationConfig {
    const file = path.join(dir, 'generation_config.json');
    const pick = (o: Record<string, unknown>) =>
      Object.fromEntries(Object.entries(o).filter(([k]) => k in new GenerationConfig())) as Partial<GenerationConfigFields>;
    if (fs.existsSync(file)) {
      try {
        return new GenerationConfig(pick(JSON.parse(fs.readFileSync(file, 'utf8'))));
      } catch (err) {
        throw new PeftNodeError('ERR_JSON', `${file} is not valid JSON: ${(err as Error).message}`);
      }
    }
    const ids = ['bos_token_id', 'eos_token_id', 'pad_token_id'].filter((k) => typeof modelConfig[k] === 'number');
    return new GenerationConfig(pick(Object.fromEntries(ids.map((k) => [k, modelConfig[k]]))));
  }
}
