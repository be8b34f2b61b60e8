/**
 * generate() for BloomForCausalLM and PEFT models, with transformers' semantics: greedy or sampling (temperature,
 * top_k, top_p, repetition_penalty, seed), max_new_tokens / max_length, per-row stop on eos, left-padded batches,
 * prompt + new ids returned. The decode loop is native (a preallocated KV cache, one token per step) and runs off the
 * main thread; streamers get each step's tokens as they come.
 */
import { CALLER_ERRORS, PeftNodeError, repr } from '../errors';
import type { PastKeyValues } from '../cache_utils';
import { check_allocation, dtype_bytes } from '../runtime/memory';
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
  if (v !== undefined && !ok) throw new PeftNodeError('ERR_INVALID_INPUT', `generate: ${name} ${what}, got ${repr(v)}`);
}

/** Runs the caller's code (a streamer); what it throws reaches the caller unchanged, not as a libtorch error. */
function callerCode(f: () => unknown): void {
  try {
    f();
  } catch (err) {
    if (typeof err === 'object' && err !== null) CALLER_ERRORS.add(err);
    throw err;
  }
}

/** @internal shared by BloomForCausalLM.generate and PeftModel.generate */
export async function run_generate(
  handle: NativeBloomModel,
  defaults: GenerationConfig,
  options: GenerateOptions,
  past?: PastKeyValues,
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
  // A KV-cache decoder ends up holding keys and values for every position: refuse what cannot fit, before allocating.
  const mc = handle.config() as { n_layer: number; hidden_size: number; vocab_size: number; dtype: string; device: string };
  const P = past ? past.num_virtual_tokens : 0;
  const hint = 'lower max_new_tokens / max_length or the batch size';
  check_allocation(`generate with ${B} row(s) of ${P} + ${T} + ${maxNew} positions`, 2 * mc.n_layer * B * (P + T + maxNew) * mc.hidden_size * dtype_bytes(mc.dtype), mc.device, hint);
  if (options.output_scores) check_allocation(`generate's output_scores (${maxNew} x ${B} x ${mc.vocab_size})`, maxNew * B * mc.vocab_size * 4, mc.device, hint, maxNew * B * mc.vocab_size);
  const eos = o.eos_token_id === null || o.eos_token_id === undefined ? [] : Array.isArray(o.eos_token_id) ? o.eos_token_id : [o.eos_token_id];
  const streamer = options.streamer;
  let callerError: { err: unknown } | undefined;
  if (streamer && typeof streamer !== 'function') callerCode(() => streamer.put(Array.from(ids.data))); // HF puts the prompt first
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
      pastKeyValues: past?.handle,
      onStep: streamer
        ? (tokens: Int32Array) => {
            if (callerError) return false;
            try {
              return typeof streamer === 'function' ? streamer(Array.from(tokens)) : (streamer.put(Array.from(tokens)), undefined);
            } catch (err) {
              callerError = { err }; // stop decoding; rethrown as it is once the native call returns
              return false;
            }
          }
        : undefined,
    },
  );
  if (callerError) {
    const { err } = callerError;
    if (typeof err === 'object' && err !== null) CALLER_ERRORS.add(err);
    throw err;
  }
  if (streamer && typeof streamer !== 'function') callerCode(() => streamer.end());
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
