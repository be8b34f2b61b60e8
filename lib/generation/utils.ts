/**
 * generate() for BloomForCausalLM and PEFT models, with transformers' semantics: greedy or sampling (temperature,
 * top_k, top_p, repetition_penalty, seed), max_new_tokens / max_length, per-row stop on eos, left-padded batches,
 * prompt + new ids returned. The decode loop is native (a preallocated KV cache, one token per step) and runs off the
 * main thread; streamers get each step's tokens as they come.
 */
import { PeftNodeError } from '../errors';
import type { PrefixEncoder } from '../peft/prefix_encoder';
import type { NativeBloomModel } from '../runtime/native';
import { IntMatrixLike, Tensor, toIntMatrix } from '../tensor';
import { GenerationConfig } from './configuration_utils';
import { BaseStreamer } from './streamers';

export interface GenerateOptions {
  input_ids: IntMatrixLike;
  attention_mask?: IntMatrixLike;
  /** New tokens to produce (takes precedence over max_length). */
  max_new_tokens?: number;
  /** Total length, prompt included (transformers' default: 20). */
  max_length?: number;
  do_sample?: boolean;
  temperature?: number;
  /** Sampling: keep the k most likely tokens (default 50, as transformers; 0 disables). */
  top_k?: number;
  top_p?: number;
  repetition_penalty?: number;
  eos_token_id?: number | number[];
  pad_token_id?: number;
  /** Seed for sampling; the same seed gives the same tokens. */
  seed?: number;
  /** A streamer (put/end), or a function called with each step's new tokens (one per row); return false to stop. */
  streamer?: BaseStreamer | ((tokens: number[]) => boolean | void);
  /** With output_scores, resolve to `{ sequences, scores }` as HF's return_dict_in_generate. */
  return_dict_in_generate?: boolean;
  /** Keep each step's processed logits [B, V] (float32). */
  output_scores?: boolean;
}

export interface GenerateOutput {
  sequences: Tensor;
  scores?: Tensor[];
}

function check(name: string, v: unknown, ok: boolean, what: string): void {
  if (v !== undefined && !ok) throw new PeftNodeError('ERR_INVALID_INPUT', `generate: ${name} ${what}, got ${JSON.stringify(v)}`);
}

/** @internal shared by BloomForCausalLM.generate and PeftModel.generate */
export async function run_generate(
  handle: NativeBloomModel,
  defaults: GenerationConfig,
  options: GenerateOptions,
  prefix: { encoder?: PrefixEncoder },
): Promise<Tensor | GenerateOutput> {
  const ids = toIntMatrix(options.input_ids, 'input_ids');
  const [B, T] = ids.dims;
  let mask: Int32Array | undefined;
  if (options.attention_mask !== undefined) {
    const m = toIntMatrix(options.attention_mask, 'attention_mask');
    if (m.dims[0] !== B || m.dims[1] !== T)
      throw new PeftNodeError('ERR_INVALID_INPUT', `attention_mask has shape [${m.dims}] but input_ids has shape [${ids.dims}]`);
    mask = m.data;
  }
  const o = { ...defaults, ...Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined)) } as GenerateOptions & GenerationConfig;
  const maxNew = options.max_new_tokens ?? (options.max_length !== undefined ? options.max_length - T : (defaults.max_new_tokens ?? defaults.max_length - T));
  check('max_new_tokens', maxNew, Number.isSafeInteger(maxNew) && maxNew >= 0, 'must be a non-negative integer (max_length must not be below the prompt length)');
  check('temperature', o.temperature, typeof o.temperature === 'number' && o.temperature > 0, 'must be > 0');
  check('top_k', o.top_k, Number.isSafeInteger(o.top_k) && o.top_k >= 0, 'must be a non-negative integer');
  check('top_p', o.top_p, typeof o.top_p === 'number' && o.top_p > 0 && o.top_p <= 1, 'must be in (0, 1]');
  check('repetition_penalty', o.repetition_penalty, typeof o.repetition_penalty === 'number' && o.repetition_penalty > 0, 'must be > 0');
  check('seed', options.seed, Number.isSafeInteger(options.seed) && options.seed! >= 0, 'must be a non-negative integer');
  const eos = o.eos_token_id === null || o.eos_token_id === undefined ? [] : Array.isArray(o.eos_token_id) ? o.eos_token_id : [o.eos_token_id];
  const streamer = options.streamer;
  if (streamer && typeof streamer !== 'function') streamer.put(Array.from(ids.data)); // HF puts the prompt first
  const r = await handle.generate(
    { inputIds: ids.data, batch: B, seqLen: T, attentionMask: mask },
    {
      maxNewTokens: maxNew,
      doSample: o.do_sample,
      temperature: o.temperature,
      topK: o.top_k,
      topP: o.top_p,
      repetitionPenalty: o.repetition_penalty,
      eosTokenIds: eos,
      padTokenId: o.pad_token_id ?? undefined,
      seed: options.seed,
      outputScores: options.output_scores ?? false,
      encoder: prefix.encoder?.handle,
      onStep: streamer
        ? (tokens: Int32Array) => (typeof streamer === 'function' ? streamer(Array.from(tokens)) : (streamer.put(Array.from(tokens)), undefined))
        : undefined,
    },
  );
  if (streamer && typeof streamer !== 'function') streamer.end();
  const data = BigInt64Array.from(r.sequences, (v) => BigInt(v));
  const sequences = new Tensor('int64', data, r.dims);
  if (!options.return_dict_in_generate) return sequences;
  const out: GenerateOutput = { sequences };
  if (r.scores && r.scoresDims) {
    const [n, b, v] = r.scoresDims;
    out.scores = Array.from({ length: n }, (_, i) => new Tensor('float32', r.scores!.slice(i * b * v, (i + 1) * b * v), [b, v]));
  }
  return out;
}
