/** BloomConfig: config.json as transformers reads it, with BLOOM's attribute aliases resolved. */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { readJsonObject } from '../../utils/python_json';
import { PeftNodeError } from '../../errors';

export class BloomConfig {
  readonly model_type = 'bloom';
  vocab_size: number;
  hidden_size: number;
  n_layer: number;
  n_head: number;
  layer_norm_epsilon: number;
  apply_residual_connection_post_layernorm: boolean;
  tie_word_embeddings: boolean;
  bos_token_id: number | null;
  eos_token_id: number | null;
  pad_token_id: number | null;
  /** The checkpoint's dtype as written (transformers 5 writes `dtype`, older files `torch_dtype`). */
  dtype: string | null;
  /** Every key of config.json, untouched. */
  readonly raw: Record<string, unknown>;

  constructor(raw: Record<string, unknown>) {
    this.raw = raw;
    const num = (keys: string[], fallback: number): number => {
      for (const k of keys) if (typeof raw[k] === 'number') return raw[k] as number;
      return fallback;
    };
    const idOrNull = (k: string): number | null => (typeof raw[k] === 'number' ? (raw[k] as number) : null);
    this.vocab_size = num(['vocab_size'], 250880);
    this.hidden_size = num(['hidden_size', 'n_embed'], 64);
    this.n_layer = num(['n_layer', 'num_hidden_layers'], 2);
    this.n_head = num(['n_head', 'num_attention_heads'], 8);
    this.layer_norm_epsilon = num(['layer_norm_epsilon'], 1e-5);
    this.apply_residual_connection_post_layernorm = raw.apply_residual_connection_post_layernorm === true;
    this.tie_word_embeddings = raw.tie_word_embeddings !== false;
    this.bos_token_id = idOrNull('bos_token_id');
    this.eos_token_id = idOrNull('eos_token_id');
    this.pad_token_id = idOrNull('pad_token_id');
    const dt = raw.dtype ?? raw.torch_dtype;
    this.dtype = typeof dt === 'string' ? dt : null;
  }

  /** transformers' generic aliases. */
  get num_hidden_layers(): number {
    return this.n_layer;
  }
  get num_attention_heads(): number {
    return this.n_head;
  }

  to_dict(): Record<string, unknown> {
    return { ...this.raw };
  }

  /** Reads `<dir>/config.json`; errors name the path and, for other architectures, the model_type. */
  static from_pretrained(dir: string): BloomConfig {
    const file = path.join(dir, 'config.json');
    if (!fs.existsSync(file)) throw new PeftNodeError('ERR_FILE_NOT_FOUND', `config.json not found: ${file}`);
    const raw = readJsonObject(file);
    const modelType = (raw as Record<string, unknown>).model_type;
    if (modelType !== 'bloom')
      throw new PeftNodeError(
        'ERR_UNSUPPORTED_MODEL',
        `model_type '${String(modelType)}' in ${file} is not supported: peft-node supports BLOOM (model_type 'bloom')`,
      );
    return new BloomConfig(raw as Record<string, unknown>);
  }
}
