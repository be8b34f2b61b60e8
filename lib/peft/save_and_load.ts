/**
 * State dicts of a prefix-tuning PeftModel, as torch's Module.state_dict / load_state_dict see it and as PEFT's
 * peft/utils/save_and_load.py exports it (PEFT 0.21, checked against it: scripts/gen_fixtures.py, golden/state_dict.json).
 *
 * PEFT's PeftModelForCausalLM registers, in this order: `base_model` (the transformers model, so its keys are
 * `base_model.transformer.…` and the tied `base_model.lm_head.weight`), `prompt_encoder.<adapter>.…` for each
 * adapter, and `word_embeddings` (the base model's input embeddings again, for prompt learning). torch's
 * state_dict lists every registered name, tied ones included; named_parameters lists each parameter once.
 */
import { PeftNodeError } from '../errors';
import { Tensor, isFloatArray } from '../tensor';
import type { PeftModel } from './peft_model';

/** Where a state-dict key's values live: a base-model parameter or an adapter's encoder parameter. */
type Target = { kind: 'base'; name: string } | { kind: 'encoder'; adapter: string; name: string };

interface Entry {
  key: string;
  shape: number[];
  target: Target;
}

const WORD_EMBEDDINGS = 'transformer.word_embeddings.weight';

/** Every key of `model.state_dict()`, in torch's order, with its shape and where it lives. */
export async function state_dict_entries(model: PeftModel): Promise<Entry[]> {
  const base = model.base_model;
  const entries: Entry[] = base.named_parameters().map(([name, p]) => ({ key: `base_model.${name}`, shape: p.shape, target: { kind: 'base', name } }));
  const embedShape = entries.find((e) => e.key === `base_model.${WORD_EMBEDDINGS}`)?.shape;
  if (!embedShape) throw new PeftNodeError('ERR_WEIGHT_MISSING', `the base model has no ${WORD_EMBEDDINGS}`);
  if (base.config.tie_word_embeddings && !entries.some((e) => e.key === 'base_model.lm_head.weight'))
    entries.push({ key: 'base_model.lm_head.weight', shape: embedShape, target: { kind: 'base', name: WORD_EMBEDDINGS } });
  for (const adapter of Object.keys(model.peft_config)) {
    const enc = await model.prompt_encoder(adapter);
    for (const [name, shape] of enc.parameter_shapes())
      entries.push({ key: `prompt_encoder.${adapter}.${name}`, shape, target: { kind: 'encoder', adapter, name } });
  }
  entries.push({ key: 'word_embeddings.weight', shape: embedShape, target: { kind: 'base', name: WORD_EMBEDDINGS } });
  return entries;
}

async function read(model: PeftModel, t: Target): Promise<Tensor> {
  return t.kind === 'base' ? model.base_model.get_parameter(t.name) : (await model.prompt_encoder(t.adapter)).get_parameter(t.name);
}

/** torch's state_dict(): a float32 copy of every entry (tied names share one Tensor). */
export async function read_state_dict(model: PeftModel): Promise<Record<string, Tensor>> {
  const out: Record<string, Tensor> = {};
  const seen = new Map<string, Tensor>();
  for (const e of await state_dict_entries(model)) {
    const id = e.target.kind === 'base' ? `base:${e.target.name}` : `enc:${e.target.adapter}:${e.target.name}`;
    let t = seen.get(id);
    if (!t) seen.set(id, (t = await read(model, e.target)));
    out[e.key] = t;
  }
  return out;
}

function checkRecord(state: unknown, fn: string): asserts state is Record<string, Tensor> {
  if (typeof state !== 'object' || state === null || Array.isArray(state) || state instanceof Tensor)
    throw new PeftNodeError('ERR_INVALID_INPUT', `${fn} needs an object of Tensors by name, got ${state === null ? 'null' : Array.isArray(state) ? 'an array' : typeof state}`);
  for (const [name, t] of Object.entries(state))
    if (!(t instanceof Tensor) && !(typeof t === 'object' && t !== null && Array.isArray((t as Tensor).dims) && ArrayBuffer.isView((t as Tensor).data)))
      throw new PeftNodeError('ERR_INVALID_INPUT', `${fn}: '${name}' must be a Tensor`);
}

function checkValue(fn: string, key: string, t: Tensor, shape: number[]): void {
  if (t.dims.length !== shape.length || t.dims.some((d, i) => d !== shape[i]))
    throw new PeftNodeError(
      'ERR_SHAPE_MISMATCH',
      `${fn}: size mismatch for ${key}: copying a param with shape [${t.dims}] from checkpoint, the shape in current model is [${shape}]`,
    );
  if (!isFloatArray(t.data)) throw new PeftNodeError('ERR_INVALID_INPUT', `${fn}: '${key}' must be float32 or float64, got ${t.type}`);
  if (t.data.length !== shape.reduce((a, b) => a * b, 1))
    throw new PeftNodeError('ERR_SHAPE_MISMATCH', `${fn}: '${key}' holds ${t.data.length} values for shape [${t.dims}]`);
}

async function write(model: PeftModel, t: Target, value: Tensor): Promise<void> {
  if (t.kind === 'encoder') await (await model.prompt_encoder(t.adapter)).set_parameter(t.name, value);
  else await model.base_model.load_state_dict({ [t.name]: value }, { strict: false });
}

/**
 * torch's load_state_dict(state, strict): every value is checked (shape, float dtype) before anything is copied, so
 * a refused call changes nothing (torch may have copied part of it by then). Keys are applied in state_dict order; a
 * tied name (`base_model.lm_head.weight`, `word_embeddings.weight`) writes the embeddings it shares.
 */
export async function load_state_dict_into(
  model: PeftModel,
  state: Record<string, Tensor>,
  strict: boolean,
): Promise<{ missing_keys: string[]; unexpected_keys: string[] }> {
  const fn = 'load_state_dict';
  checkRecord(state, fn);
  const entries = await state_dict_entries(model);
  const known = new Set(entries.map((e) => e.key));
  const missing_keys = entries.filter((e) => !(e.key in state)).map((e) => e.key);
  const unexpected_keys = Object.keys(state).filter((k) => !known.has(k));
  if (strict && (missing_keys.length || unexpected_keys.length)) {
    const quote = (ks: string[]) => ks.map((k) => `"${k}"`).join(', ');
    throw new PeftNodeError(
      'ERR_WEIGHT_MISSING',
      `Error(s) in loading state_dict for ${model.constructor.name}:` +
        (missing_keys.length ? ` Missing key(s) in state_dict: ${quote(missing_keys)}.` : '') +
        (unexpected_keys.length ? ` Unexpected key(s) in state_dict: ${quote(unexpected_keys)}.` : ''),
    );
  }
  const present = entries.filter((e) => e.key in state);
  for (const e of present) checkValue(fn, e.key, state[e.key], e.shape);
  // The last key naming a parameter wins, as torch copies them in order.
  const writes = new Map<string, [Target, Tensor]>();
  for (const e of present) {
    const id = e.target.kind === 'base' ? `base:${e.target.name}` : `enc:${e.target.adapter}:${e.target.name}`;
    writes.delete(id);
    writes.set(id, [e.target, state[e.key]]);
  }
  for (const [target, value] of writes.values()) await write(model, target, value);
  return { missing_keys, unexpected_keys };
}

/**
 * PEFT's get_peft_model_state_dict for prefix tuning: `{ prompt_embeddings }`, the [P, 2·L·D] prefix an adapter
 * file stores (the projection MLP's output while training with one; the embedding itself in inference mode).
 */
export async function get_peft_model_state_dict(
  model: PeftModel,
  options: { adapter_name?: string } = {},
): Promise<Record<string, Tensor>> {
  const adapter = options.adapter_name ?? 'default';
  return { prompt_embeddings: await model.get_prompt_embedding_to_save(adapter) };
}

/**
 * PEFT's set_peft_model_state_dict for prefix tuning: `prompt_embeddings` becomes the adapter's `embedding.weight`
 * (so its shape must be that of the embedding: an adapter training a projection MLP cannot take the MLP's output, as
 * in PEFT); other keys that name the model's state dict are loaded as by load_state_dict(strict=false). Returns what
 * PEFT returns, the non-strict load's `{ missing_keys, unexpected_keys }` (`prompt_embeddings` itself is unexpected).
 */
export async function set_peft_model_state_dict(
  model: PeftModel,
  peft_model_state_dict: Record<string, Tensor>,
  options: { adapter_name?: string } = {},
): Promise<{ missing_keys: string[]; unexpected_keys: string[] }> {
  const fn = 'set_peft_model_state_dict';
  checkRecord(peft_model_state_dict, fn);
  const adapter = options.adapter_name ?? 'default';
  const enc = await model.prompt_encoder(adapter);
  const emb = peft_model_state_dict.prompt_embeddings;
  if (!emb)
    throw new PeftNodeError(
      'ERR_WEIGHT_MISSING',
      `${fn}: no 'prompt_embeddings' in the state dict (found: ${Object.keys(peft_model_state_dict).join(', ') || 'nothing'})`,
    );
  const shape = enc.parameter_shapes().find(([n]) => n === 'embedding.weight')![1];
  checkValue(fn, `prompt_encoder.${adapter}.embedding.weight`, emb, shape);
  const result = await load_state_dict_into(model, peft_model_state_dict, false);
  await enc.set_parameter('embedding.weight', emb);
  return result;
}
