/**
 * What `generate` and `chat` share: picking the base model and adapter (flags, else the last adapter `peft-node
 * train` saved, else the embedded tiny BLOOM alone), loading them, and streaming an answer as it is generated.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { PeftNodeError } from '../errors';
import { TextStreamer } from '../generation/streamers';
import { AutoModelForCausalLM } from '../models/auto';
import { BloomForCausalLM, FromPretrainedOptions } from '../models/bloom/modeling_bloom';
import { PeftModel, PeftModelForCausalLM } from '../peft/peft_model';
import { AutoTokenizer } from '../tokenizer/auto';
import { PreTrainedTokenizer } from '../tokenizer/tokenization_utils';
import {
  EMBEDDED_MODEL,
  GenerationFlags,
  note,
  output_closed,
  read_last_adapter,
  require_adapter_dir,
  require_model_dir,
  same_path,
} from './common';

export interface ModelChoice {
  /** Base model directory, as passed to from_pretrained. */
  model: string;
  /** Adapter directory, or null for the base model alone. */
  adapter: string | null;
  /** Where the choice came from, for the note on stderr. */
  why: string;
}

function adapterBase(adapter: string): string | null {
  try {
    const v = JSON.parse(fs.readFileSync(path.join(adapter, 'adapter_config.json'), 'utf8')) as { base_model_name_or_path?: unknown };
    return typeof v.base_model_name_or_path === 'string' && v.base_model_name_or_path !== '' ? v.base_model_name_or_path : null;
  } catch {
    return null; // PeftModel.from_pretrained reports a broken config precisely
  }
}

/**
 * Resolves `--model` / `--adapter` / `--no-adapter` as a user of PEFT expects:
 * - `--adapter DIR`: that adapter, on `--model`, else on the base model its adapter_config.json names;
 * - neither: the last adapter `peft-node train` saved (on its base model) if there is one, else the embedded model;
 * - `--model DIR` only: the last adapter if it was trained on that model, else the model alone;
 * - `--no-adapter`: the model alone.
 */
export function choose_model(modelFlag: string | undefined, adapterFlag: string | false | undefined): ModelChoice {
  if (modelFlag !== undefined) require_model_dir(modelFlag);
  if (typeof adapterFlag === 'string') {
    require_adapter_dir(adapterFlag);
    if (modelFlag !== undefined) return { model: modelFlag, adapter: adapterFlag, why: '--model and --adapter' };
    const base = adapterBase(adapterFlag);
    if (base === null)
      throw new PeftNodeError('ERR_CONFIG', `${path.join(adapterFlag, 'adapter_config.json')} names no base_model_name_or_path: pass --model DIR`);
    if (!fs.existsSync(path.join(base, 'config.json')))
      throw new PeftNodeError(
        'ERR_FILE_NOT_FOUND',
        `adapter ${adapterFlag} was trained on '${base}', which is not a local model directory here: pass --model DIR`,
      );
    return { model: base, adapter: adapterFlag, why: `the adapter's base_model_name_or_path` };
  }
  const model = modelFlag ?? EMBEDDED_MODEL;
  if (adapterFlag === false) return { model, adapter: null, why: '--no-adapter' };
  const last = read_last_adapter();
  if (last && !fs.existsSync(path.join(last.adapter, 'adapter_config.json'))) {
    note(`the last adapter (${last.adapter}) no longer exists; generating with the base model alone`);
    return { model, adapter: null, why: 'no adapter' };
  }
  if (!last) {
    note('no adapter yet (train one with `peft-node train`, or pass --adapter DIR): generating with the base model alone');
    return { model, adapter: null, why: 'no adapter' };
  }
  if (modelFlag === undefined) {
    if (!fs.existsSync(path.join(last.base_model, 'config.json')))
      throw new PeftNodeError(
        'ERR_FILE_NOT_FOUND',
        `the last adapter (${last.adapter}) was trained on ${last.base_model}, which no longer exists: pass --model DIR (or --no-adapter)`,
      );
    return { model: last.base_model, adapter: last.adapter, why: 'the last adapter trained' };
  }
  if (same_path(modelFlag, last.base_model)) return { model: modelFlag, adapter: last.adapter, why: 'the last adapter trained on this model' };
  note(`the last adapter (${last.adapter}) was trained on another model (${last.base_model}); generating with ${modelFlag} alone (pass --adapter DIR to choose one)`);
  return { model: modelFlag, adapter: null, why: 'no adapter for this model' };
}

export interface Loaded {
  choice: ModelChoice;
  base: BloomForCausalLM;
  peft: PeftModelForCausalLM | null;
  tokenizer: PreTrainedTokenizer;
  dispose(): Promise<void>;
}

/** Loads the tokenizer (the model's; else the adapter's), the base model and the adapter. */
export async function load_for_generation(choice: ModelChoice, options: FromPretrainedOptions): Promise<Loaded> {
  const tokDir =
    !fs.existsSync(path.join(choice.model, 'tokenizer.json')) && choice.adapter && fs.existsSync(path.join(choice.adapter, 'tokenizer.json'))
      ? choice.adapter
      : choice.model;
  const tokenizer = await AutoTokenizer.from_pretrained(tokDir);
  // Load under the adapter's own spelling of the base path when it is the same directory: no rename warning.
  let modelPath = choice.model;
  if (choice.adapter) {
    const base = adapterBase(choice.adapter);
    if (base !== null && base !== modelPath && same_path(base, modelPath)) modelPath = base;
  }
  const base = await AutoModelForCausalLM.from_pretrained(modelPath, options);
  let peft: PeftModelForCausalLM | null = null;
  try {
    if (choice.adapter) peft = await PeftModel.from_pretrained(base, choice.adapter);
  } catch (err) {
    await base.dispose();
    throw err;
  }
  return {
    choice,
    base,
    peft,
    tokenizer,
    async dispose() {
      await peft?.dispose();
      await base.dispose();
    },
  };
}

/**
 * Generates a continuation of `prompt` and hands each finished piece of text to `write` as it comes (never half a
 * character). `should_stop` is asked after every token. Resolves with the whole answer.
 */
export async function stream_answer(
  loaded: Loaded,
  prompt: string,
  flags: GenerationFlags,
  write: (text: string) => void,
  should_stop: () => boolean = () => false,
): Promise<string> {
  const ids = loaded.tokenizer(prompt).input_ids;
  if (ids.length === 0) throw new PeftNodeError('ERR_INVALID_INPUT', 'the prompt is empty');
  let answer = '';
  const streamer = new TextStreamer(loaded.tokenizer, {
    skip_special_tokens: true,
    on_text: (text) => {
      if (!text) return;
      answer += text;
      write(text);
    },
  });
  const lm = loaded.peft ?? loaded.base;
  await lm.generate({
    input_ids: [ids],
    max_new_tokens: flags.max_new_tokens,
    do_sample: flags.do_sample,
    temperature: flags.temperature,
    top_k: flags.top_k,
    top_p: flags.top_p,
    repetition_penalty: flags.repetition_penalty,
    seed: flags.seed,
    // A function streamer gets each step's token and may stop generation; the TextStreamer turns tokens into text.
    streamer: (tokens: number[]) => {
      streamer.put(tokens);
      return !should_stop() && !output_closed();
    },
  });
  streamer.end();
  return answer;
}
