/**
 * PEFT's state-dict API on a prefix-tuning model, against what PEFT 0.21 + torch do (scripts/gen_fixtures.py,
 * golden/state_dict.json): torch's state_dict() keys and shapes, load_state_dict's round trip, strict errors and
 * shape checks, get_peft_model_state_dict / set_peft_model_state_dict, and a prefix set that way giving PEFT's logits.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  AutoModelForCausalLM,
  BloomForCausalLM,
  PeftModel,
  PeftModelForCausalLM,
  PrefixTuningConfig,
  Tensor,
  get_peft_model,
  get_peft_model_state_dict,
  set_peft_model_state_dict,
  set_seed,
} from '../lib';
import { readSafetensors } from '../lib/utils/safetensors';
import { GOLDEN, TINY, asNumbers, fixtureFidelity, goldenCases, goldenTensors, maxRelErr, useOneThreadExactMode } from './helpers';
import { FORWARD_REL } from './tolerances';

interface PeftSide {
  state_dict: [string, number[]][];
  named_parameters: string[];
  peft_state_dict: [string, number[]][];
  load_own: [string[], string[]];
  strict_error: string;
  non_strict: { missing_keys: string[]; unexpected_keys: string[] };
  shape_error: string;
  set_peft_error: string | null;
  set_peft?: { missing_keys: string[]; unexpected_keys: string[] };
}
const PEFT: { noproj: PeftSide; proj: PeftSide; loaded_set: { missing_keys: string[]; unexpected_keys: string[]; state_dict: [string, number[]][] } } =
  JSON.parse(fs.readFileSync(path.join(GOLDEN, 'state_dict.json'), 'utf8'));
const fidelity = fixtureFidelity(GOLDEN);

let model: BloomForCausalLM;
beforeAll(async () => {
  model = await AutoModelForCausalLM.from_pretrained(TINY);
});
afterAll(async () => {
  await model.dispose();
});

function peftModel(prefix_projection: boolean): PeftModelForCausalLM {
  set_seed(0);
  return get_peft_model(model, new PrefixTuningConfig({ task_type: 'CAUSAL_LM', num_virtual_tokens: 4, prefix_projection }));
}

async function rejection(p: Promise<unknown>): Promise<{ code: string; message: string }> {
  const err = await p.then(() => undefined, (e) => e);
  expect(err).toBeDefined();
  return err;
}

const shapesOf = (sd: Record<string, Tensor>) => Object.entries(sd).map(([k, t]) => [k, t.dims]);

describe.each([['noproj', false], ['proj', true]] as const)('%s', (name, projection) => {
  const peft = PEFT[name];

  test("state_dict(): torch's keys in torch's order, shapes, tied names sharing values", async () => {
    await using pm = peftModel(projection);
    const sd = await pm.state_dict();
    expect(shapesOf(sd)).toEqual(peft.state_dict);
    expect(pm.named_parameters().map(([n]) => n)).toEqual(peft.named_parameters);
    const emb = sd['base_model.transformer.word_embeddings.weight'];
    expect(sd['base_model.lm_head.weight']).toBe(emb);
    expect(sd['word_embeddings.weight']).toBe(emb);
    expect(maxRelErr(asNumbers(emb), asNumbers(await model.get_parameter('transformer.word_embeddings.weight')))).toBe(0);
    const enc = await pm.prompt_encoder();
    for (const [rel] of enc.parameter_shapes())
      expect(maxRelErr(asNumbers(sd[`prompt_encoder.default.${rel}`]), asNumbers(await enc.get_parameter(rel)))).toBe(0);
  });

  test('load_state_dict: a round trip matches every key, and the loaded values are what state_dict() then returns', async () => {
    await using pm = peftModel(projection);
    const sd = await pm.state_dict();
    const changed: Record<string, Tensor> = { ...sd };
    for (const k of Object.keys(sd).filter((key) => key.startsWith('prompt_encoder.')))
      changed[k] = new Tensor('float32', Float32Array.from(sd[k].data as Float32Array, (v, i) => v * 2 + (i % 3)), sd[k].dims);
    const r = await pm.load_state_dict(changed);
    expect([r.missing_keys, r.unexpected_keys]).toEqual(peft.load_own);
    const again = await pm.state_dict();
    for (const k of Object.keys(sd)) expect([k, maxRelErr(asNumbers(again[k]), asNumbers(changed[k]))]).toEqual([k, 0]);
  });

  test('strict: missing and unexpected keys are ERR_WEIGHT_MISSING naming them; not strict returns them, as torch', async () => {
    await using pm = peftModel(projection);
    const sd = await pm.state_dict();
    const bad: Record<string, Tensor> = { ...sd, 'foo.bar': new Tensor('float32', new Float32Array(1), [1]) };
    delete bad['prompt_encoder.default.embedding.weight'];
    const before = await pm.get_prompt_embedding_to_save();
    const err = await rejection(pm.load_state_dict(bad));
    expect(err.code).toBe('ERR_WEIGHT_MISSING');
    // torch: 'Error(s) in loading state_dict for PeftModelForCausalLM:\n\tMissing key(s) in state_dict: "…". \n\t…'
    expect(peft.strict_error).toContain('Missing key(s) in state_dict: "prompt_encoder.default.embedding.weight"');
    expect(err.message).toContain('Error(s) in loading state_dict for PeftModelForCausalLM:');
    expect(err.message).toContain('Missing key(s) in state_dict: "prompt_encoder.default.embedding.weight".');
    expect(err.message).toContain('Unexpected key(s) in state_dict: "foo.bar".');
    expect(await pm.load_state_dict(bad, { strict: false })).toEqual(peft.non_strict);
    expect(maxRelErr(asNumbers(await pm.get_prompt_embedding_to_save()), asNumbers(before))).toBe(0);
  });

  test('a wrong shape is ERR_SHAPE_MISMATCH even when not strict, and nothing is copied', async () => {
    await using pm = peftModel(projection);
    const sd = await pm.state_dict();
    const marker = new Tensor('float32', new Float32Array(32).fill(7), [32]);
    const wrong = { ...sd, 'base_model.transformer.ln_f.bias': marker, 'prompt_encoder.default.embedding.weight': new Tensor('float32', new Float32Array(15), [3, 5]) };
    const err = await rejection(pm.load_state_dict(wrong, { strict: false }));
    expect(err.code).toBe('ERR_SHAPE_MISMATCH');
    const shape = peft.state_dict.find(([k]) => k === 'prompt_encoder.default.embedding.weight')![1];
    expect(peft.shape_error).toContain(`size mismatch for prompt_encoder.default.embedding.weight: copying a param with shape torch.Size([3, 5]) from checkpoint, the shape in current model is torch.Size([${shape.join(', ')}])`);
    expect(err.message).toContain(`size mismatch for prompt_encoder.default.embedding.weight: copying a param with shape [3,5] from checkpoint, the shape in current model is [${shape}]`);
    // ln_f.bias comes before the bad key in state_dict order: checked first, it was still not written.
    expect(asNumbers(await model.get_parameter('transformer.ln_f.bias'))).not.toContain(7);
  });

  test('get_peft_model_state_dict / set_peft_model_state_dict as PEFT exports them', async () => {
    await using pm = peftModel(projection);
    const psd = await get_peft_model_state_dict(pm);
    expect(shapesOf(psd)).toEqual(peft.peft_state_dict);
    expect(maxRelErr(asNumbers(psd.prompt_embeddings), asNumbers(await pm.get_prompt_embedding_to_save()))).toBe(0);
    if (peft.set_peft_error === null) {
      expect(await set_peft_model_state_dict(pm, psd)).toEqual(peft.set_peft);
    } else {
      // A trainable projection MLP's embedding is [P, D]: PEFT cannot load its own [P, 2·L·D] output into it either.
      expect(peft.set_peft_error).toContain('size mismatch for weight');
      const err = await rejection(set_peft_model_state_dict(pm, psd));
      expect(err.code).toBe('ERR_SHAPE_MISMATCH');
      expect(err.message).toContain('prompt_encoder.default.embedding.weight');
    }
  });
});

test('model weights round-trip too: base keys write the base model (and the tied names its embeddings), as in torch', async () => {
  await using pm = peftModel(false);
  const sd = await pm.state_dict();
  const bias = sd['base_model.transformer.ln_f.bias'];
  const emb = sd['word_embeddings.weight'];
  try {
    const shifted = new Tensor('float32', Float32Array.from(bias.data as Float32Array, (v) => v + 1), bias.dims);
    const scaled = new Tensor('float32', Float32Array.from(emb.data as Float32Array, (v) => v * 3), emb.dims);
    // word_embeddings.weight comes last in torch's order, so its value is the one the shared weight keeps.
    await pm.load_state_dict({ ...sd, 'base_model.transformer.ln_f.bias': shifted, 'word_embeddings.weight': scaled });
    expect(maxRelErr(asNumbers(await model.get_parameter('transformer.ln_f.bias')), asNumbers(shifted))).toBe(0);
    expect(maxRelErr(asNumbers(await model.get_parameter('transformer.word_embeddings.weight')), asNumbers(scaled))).toBe(0);
  } finally {
    await pm.load_state_dict(sd);
  }
  expect(maxRelErr(asNumbers(await model.get_parameter('transformer.word_embeddings.weight')), asNumbers(emb))).toBe(0);
});

describe(`a prefix set through set_peft_model_state_dict, then forward (one thread, exact mode: ${fidelity.label})`, () => {
  const tol = fidelity.bitExact ? 0 : FORWARD_REL;
  useOneThreadExactMode();

  test("on an adapter loaded with PeftModel.from_pretrained: PEFT's result lists and logits", async () => {
    const g = readSafetensors(path.join(GOLDEN, 'state_dict.safetensors')).tensors;
    await using loaded = await PeftModel.from_pretrained(model, path.join(GOLDEN, 'h4_proj_sum.adapter'));
    const r = await set_peft_model_state_dict(loaded, { prompt_embeddings: g.get('prompt_embeddings')! });
    expect(r).toEqual({ missing_keys: PEFT.loaded_set.missing_keys, unexpected_keys: PEFT.loaded_set.unexpected_keys });
    expect(shapesOf(await loaded.state_dict())).toEqual(PEFT.loaded_set.state_dict);
    const out = await loaded.forward({ input_ids: g.get('input_ids')! });
    expect(maxRelErr(asNumbers(out.logits!), asNumbers(g.get('logits')!))).toBeLessThanOrEqual(tol);
  });

  test("on a model being trained: the golden case's prefix gives PEFT's logits, loss and prefix gradient", async () => {
    const c = goldenCases().find((x) => x.name === 'h4_noproj_mean')!;
    const g = goldenTensors(c);
    await using pm = get_peft_model(model, new PrefixTuningConfig({ task_type: 'CAUSAL_LM', num_virtual_tokens: c.num_virtual_tokens }));
    await set_peft_model_state_dict(pm, { prompt_embeddings: g.get('param.prompt_encoder.default.embedding.weight')! });
    const out = await pm.forward({ input_ids: g.get('input_ids')!, attention_mask: g.get('attention_mask'), labels: g.get('labels') }, { backward: true });
    const V = g.get('logits')!.dims[2];
    const mask = asNumbers(g.get('attention_mask')!);
    expect(maxRelErr(asNumbers(out.logits!), asNumbers(g.get('logits')!), (i) => mask[Math.floor(i / V)] === 1)).toBeLessThanOrEqual(tol);
    expect(maxRelErr([out.loss!], asNumbers(g.get('loss')!))).toBeLessThanOrEqual(tol);
    const grad = await (await pm.prompt_encoder()).get_grad('embedding.weight');
    expect(maxRelErr(asNumbers(grad!), asNumbers(g.get('grad.prompt_encoder.default.embedding.weight')!))).toBeLessThanOrEqual(tol);
  });
});

test('bad arguments are named errors', async () => {
  await using pm = peftModel(false);
  expect((await rejection(pm.load_state_dict(null as never))).code).toBe('ERR_INVALID_INPUT');
  expect((await rejection(pm.load_state_dict({ 'word_embeddings.weight': [1, 2] as never }))).code).toBe('ERR_INVALID_INPUT');
  const sd = await pm.state_dict();
  const ints = { ...sd, 'base_model.transformer.ln_f.bias': new Tensor('int32', new Int32Array(32), [32]) };
  expect(await rejection(pm.load_state_dict(ints))).toMatchObject({ code: 'ERR_INVALID_INPUT', message: expect.stringContaining('ln_f.bias') });
  const missing = await rejection(set_peft_model_state_dict(pm, { embedding: sd['prompt_encoder.default.embedding.weight'] }));
  expect(missing).toMatchObject({ code: 'ERR_WEIGHT_MISSING', message: expect.stringContaining("no 'prompt_embeddings'") });
  expect((await rejection(set_peft_model_state_dict(pm, sd, { adapter_name: 'other' }))).code).toBe('ERR_INVALID_INPUT');
  expect((await rejection(get_peft_model_state_dict(pm, { adapter_name: 'other' }))).code).toBe('ERR_INVALID_INPUT');
});
