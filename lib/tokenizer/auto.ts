/**
 * `AutoTokenizer.from_pretrained(dir)`: loads a local fast tokenizer — tokenizer.json (required),
 * tokenizer_config.json and special_tokens_map.json (optional; the map's entries override the config's, as in
 * transformers) — into a {@link PreTrainedTokenizer}.
 */
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { PeftNodeError } from '../errors';
import { isPlainObject, parseJson, readJsonFile, readTextFile } from '../data/json';
import { PreTrainedTokenizer, Side } from './tokenization_utils';

/** Overrides of tokenizer_config.json values, as keyword arguments of Python's `from_pretrained`. */
export interface AutoTokenizerOptions {
  /** Side to pad on (BLOOM repos say "left"; the default without a config is "right"). */
  padding_side?: Side;
  /** Side truncation cuts from. */
  truncation_side?: Side;
  /** Longest input of the model. */
  model_max_length?: number;
  /** Padding token (e.g. the eos token for models that have none). */
  pad_token?: string;
}

async function optionalJson(file: string): Promise<Record<string, unknown>> {
  const exists = await fs.stat(file).then((s) => s.isFile(), () => false);
  if (!exists) return {};
  const v = await readJsonFile(file);
  if (!isPlainObject(v)) throw new PeftNodeError('ERR_JSON', `${file}: expected a JSON object`);
  return v;
}

/** Picks the tokenizer class for a checkpoint; every tokenizer.json loads as a {@link PreTrainedTokenizer}. */
export class AutoTokenizer {
  /**
   * Loads the tokenizer in `pretrained_model_name_or_path` (a local directory; nothing is downloaded).
   * Errors: ERR_FILE_NOT_FOUND naming the directory or tokenizer.json; ERR_JSON naming file, line and column.
   */
  static async from_pretrained(pretrained_model_name_or_path: string, options: AutoTokenizerOptions = {}): Promise<PreTrainedTokenizer> {
    const dir = pretrained_model_name_or_path;
    const isDir = await fs.stat(dir).then((s) => s.isDirectory(), () => false);
    if (!isDir)
      throw new PeftNodeError('ERR_FILE_NOT_FOUND', `tokenizer directory not found: ${dir} (peft-node loads local directories only)`);
    const tokenizerFile = path.join(dir, 'tokenizer.json');
    const exists = await fs.stat(tokenizerFile).then((s) => s.isFile(), () => false);
    if (!exists)
      throw new PeftNodeError(
        'ERR_FILE_NOT_FOUND',
        `tokenizer.json not found: ${tokenizerFile} (peft-node needs a fast tokenizer's tokenizer.json)`,
      );
    const tokenizerJson = await readTextFile(tokenizerFile);
    const config = await optionalJson(path.join(dir, 'tokenizer_config.json'));
    const specialMap = await optionalJson(path.join(dir, 'special_tokens_map.json'));
    const overrides = Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined));
    try {
      const tokenizer = new PreTrainedTokenizer(tokenizerJson, { ...config, ...specialMap, ...overrides }, dir);
      // tokenizers.js builds pipeline steps lazily: run one text through now, so a broken tokenizer.json fails here.
      tokenizer.decode(tokenizer('Hello, 你好 123!\n').input_ids);
      return tokenizer;
    } catch (err) {
      if (err instanceof PeftNodeError) throw err;
      // Parsed once in the constructor; re-parse only on failure, to locate the error.
      if ((err as Error).name === 'SyntaxError') parseJson(tokenizerJson, tokenizerFile);
      throw new PeftNodeError('ERR_CONFIG', `cannot build the tokenizer from ${tokenizerFile}: ${(err as Error).message}`, { cause: err });
    }
  }
}
