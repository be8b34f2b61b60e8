/**
 * The pieces a training loop is made of, as torch names them: a PEFT model's get_prompt() handed to the base model
 * as past_key_values, AdamW over model.parameters() (with parameter groups and a state that round-trips),
 * clip_grad_norm_, and the named errors around them. The Trainer is built from exactly these (trainer-golden checks
 * it against HF bit for bit); here each is checked on its own.
 */
import * as fs from 'node:fs';
import {
  AdamW,
  AutoModelForCausalLM,
  BloomForCausalLM,
  PastKeyValues,
  PeftModelForCausalLM,
  PrefixTuningConfig,
  Tensor,
  Trainer,
  TrainingArguments,
  clip_grad_norm_,
  get_peft_model,
  set_seed,
} from '../lib';
import { TINY, asNumbers, leftPadCollator, maxRelErr, tmpDir } from './helpers';

let model: BloomForCausalLM;
let scratch: string;
beforeAll(async () => {
  model = await AutoModelForCausalLM.from_pretrained(TINY);
  scratch = tmpDir();
});
afterAll(async () => {
  await model.dispose();
  fs.rmSync(scratch, { recursive: true, force: true });
});

const batch = {
  input_ids: [[20, 21, 22, 23, 24, 25], [3, 3, 30, 31, 32, 33]],
  attention_mask: [[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]],
  labels: [[-100, -100, 22, 23, 24, 25], [-100, -100, -100, 31, 32, 33]],
};

function peft(prefix_projection = true, seed = 5): PeftModelForCausalLM {
  set_seed(seed);
  return get_peft_model(model, new PrefixTuningConfig({ task_type: 'CAUSAL_LM', num_virtual_tokens: 3, prefix_projection }));
}

async function rejection(p: Promise<unknown> | (() => unknown)): Promise<{ code: string; message: string }> {
  const err = await (typeof p === 'function' ? Promise.resolve().then(p) : p).then(() => undefined, (e) => e);
  expect(err).toBeDefined();
  return err;
}

async function values(params: { data(): Promise<Tensor> }[]): Promise<Float64Array[]> {
  return Promise.all(params.map(async (p) => asNumbers(await p.data())));
}

describe('past_key_values: the prompt flows into the base model', () => {
  test("get_prompt(B) as the base model's past_key_values gives the PEFT model's forward, bit for bit, gradients included", async () => {
    await using pm = peft();
    const viaPeft = await pm.forward(batch, { backward: true });
    const enc = await pm.prompt_encoder();
    const grads = await Promise.all(enc.parameter_shapes().map(async ([n]) => asNumbers((await enc.get_grad(n))!)));
    await pm.zero_grad();

    await using past = await pm.get_prompt(2, { requires_grad: true });
    expect(past).toBeInstanceOf(PastKeyValues);
    expect(past.dims).toEqual([2, 3, 2 * 2 * 32]);
    const direct = await model.forward(batch, { past_key_values: past, backward: true });
    expect(direct.loss).toBe(viaPeft.loss);
    expect(maxRelErr(asNumbers(direct.logits!), asNumbers(viaPeft.logits!))).toBe(0);
    for (const [i, [n]] of enc.parameter_shapes().entries())
      expect([n, maxRelErr(asNumbers((await enc.get_grad(n))!), grads[i])]).toEqual([n, 0]);
  });

  test('one row of past_key_values is broadcast over the batch; each row may carry its own prefix', async () => {
    await using pm = peft(false);
    await using one = await pm.get_prompt(1);
    await using two = await pm.get_prompt(2);
    const a = await model.forward(batch, { past_key_values: one });
    const b = await model.forward(batch, { past_key_values: two });
    expect(maxRelErr(asNumbers(a.logits!), asNumbers(b.logits!))).toBe(0);
    // Two rows with different prefixes ([B, P, W]): each row's logits are those of the row alone with its prefix.
    const W = 2 * 2 * 32;
    const p1 = new Float32Array(3 * W).map((_, i) => Math.sin(i) * 0.3);
    const p2 = new Float32Array(3 * W).map((_, i) => Math.cos(i) * 0.3);
    await using rows = PastKeyValues.from_prefix(new Tensor('float32', new Float32Array([...p1, ...p2]), [2, 3, W]), W);
    expect(rows.dims).toEqual([2, 3, W]);
    const both = asNumbers((await model.forward(batch, { past_key_values: rows })).logits!);
    for (const [r, p] of [p1, p2].entries()) {
      const alone = await model.forward({ input_ids: [batch.input_ids[r]], attention_mask: [batch.attention_mask[r]] }, { prefix: new Tensor('float32', p, [3, W]) });
      const T = 6, V = 1000, mask = batch.attention_mask[r];
      expect(maxRelErr(both.subarray(r * T * V, (r + 1) * T * V), asNumbers(alone.logits!), (i) => mask[Math.floor(i / V)] === 1)).toBeLessThanOrEqual(1e-6);
    }
  });

  test('from_prefix: its gradient is what forward({ prefix }) returns as prefix_grad', async () => {
    const W = 2 * 2 * 32;
    const prefix = new Tensor('float32', new Float32Array(4 * W).map((_, i) => Math.sin(i * 0.37) * 0.2), [4, W]);
    const viaOption = await model.forward(batch, { prefix, backward: true });
    await using past = PastKeyValues.from_prefix(prefix, W, { batch_size: 2, requires_grad: true });
    expect(await past.grad()).toBeNull();
    const direct = await model.forward(batch, { past_key_values: past, backward: true });
    expect(direct.loss).toBe(viaOption.loss);
    expect(maxRelErr(asNumbers((await past.grad())!), asNumbers(viaOption.prefix_grad!))).toBe(0);
  });

  test('named errors: a prompt without grad for backward, a second backward, a wrong shape, a disposed one, a foreign object', async () => {
    await using pm = peft();
    await using frozen = await pm.get_prompt(2);
    expect(await rejection(model.forward(batch, { past_key_values: frozen, backward: true }))).toMatchObject({ code: 'ERR_INVALID_INPUT', message: expect.stringContaining('requires_grad') });
    await using once = await pm.get_prompt(2, { requires_grad: true });
    await model.forward(batch, { past_key_values: once, backward: true });
    expect(await rejection(model.forward(batch, { past_key_values: once, backward: true }))).toMatchObject({ code: 'ERR_INVALID_INPUT', message: expect.stringContaining('new prompt') });
    await using three = await pm.get_prompt(3);
    expect((await rejection(model.forward(batch, { past_key_values: three }))).code).toBe('ERR_SHAPE_MISMATCH');
    const wide = PastKeyValues.from_prefix(new Float32Array(2 * 96), 96);
    expect((await rejection(model.forward(batch, { past_key_values: wide }))).code).toBe('ERR_SHAPE_MISMATCH');
    await wide.dispose();
    const gone = await pm.get_prompt(2);
    await gone.dispose();
    expect((await rejection(model.forward(batch, { past_key_values: gone }))).code).toBe('ERR_DISPOSED');
    expect((await rejection(model.generate({ input_ids: batch.input_ids, past_key_values: gone, max_new_tokens: 1 }))).code).toBe('ERR_DISPOSED');
    expect((await rejection(gone.grad())).code).toBe('ERR_DISPOSED');
    expect((await rejection(model.forward(batch, { past_key_values: {} as never }))).code).toBe('ERR_INVALID_INPUT');
    expect((await rejection(model.forward(batch, { past_key_values: three, prefix: new Float32Array(128) }))).code).toBe('ERR_INVALID_INPUT');
    expect((await rejection(() => PastKeyValues.from_prefix(new Float32Array(100), 128))).code).toBe('ERR_SHAPE_MISMATCH');
    expect((await rejection(pm.get_prompt(0))).code).toBe('ERR_INVALID_INPUT');
  });
});

describe('AdamW and clip_grad_norm_ over model.parameters()', () => {
  test('parameters without a gradient (the frozen base) are left alone; the prefix moves', async () => {
    await using pm = peft();
    const all = pm.parameters();
    const before = await values(all);
    const optimizer = new AdamW(all, { lr: 1e-2 });
    await pm.forward(batch, { backward: true });
    await optimizer.step();
    const after = await values(all);
    all.forEach((p, i) => expect([p.name, maxRelErr(after[i], before[i]) > 0]).toEqual([p.name, p.requires_grad]));
    await optimizer.zero_grad();
    for (const p of all.filter((q) => q.requires_grad)) expect(await p.grad()).toBeNull();
  });

  test("clip_grad_norm_ returns the total norm and scales the gradients to max_norm, as torch's", async () => {
    await using pm = peft();
    const params = pm.parameters().filter((p) => p.requires_grad);
    await pm.forward(batch, { backward: true });
    const grads = await Promise.all(params.map(async (p) => asNumbers((await p.grad())!)));
    const norm = Math.sqrt(grads.reduce((s, g) => s + g.reduce((a, v) => a + v * v, 0), 0));
    const max = norm / 4;
    expect(Math.abs((await clip_grad_norm_(params, max)) - norm) / norm).toBeLessThan(1e-6);
    const clipped = await Promise.all(params.map(async (p) => asNumbers((await p.grad())!)));
    const coef = max / (norm + 1e-6);
    clipped.forEach((g, i) => expect(maxRelErr(g, grads[i].map((v) => v * coef))).toBeLessThan(1e-6));
    // Under the bound nothing changes.
    expect(Math.abs((await clip_grad_norm_(params, 1e6)) - max) / max).toBeLessThan(1e-5);
  });

  test('parameter groups: each with its own lr and weight decay (lr 0 leaves its parameters where they are)', async () => {
    await using pm = peft();
    const params = pm.parameters().filter((p) => p.requires_grad);
    const [first, ...rest] = params;
    const optimizer = new AdamW([{ params: [first], lr: 0, weight_decay: 0 }, { params: rest }], { lr: 1e-2 });
    expect(optimizer.param_groups.map((g) => [g.params.length, g.lr, g.weight_decay])).toEqual([[1, 0, 0], [rest.length, 1e-2, 1e-2]]);
    const before = await values(params);
    await pm.forward(batch, { backward: true });
    await optimizer.step();
    const after = await values(params);
    expect(maxRelErr(after[0], before[0])).toBe(0);
    expect(maxRelErr(after[1], before[1])).toBeGreaterThan(0);
  });

  test('get_state / set_state: an optimizer restored from another continues bit-identically (what checkpoints rely on)', async () => {
    await using a = peft(true, 9);
    await using b = peft(true, 9);
    const pa = a.parameters().filter((p) => p.requires_grad);
    const pb = b.parameters().filter((p) => p.requires_grad);
    const oa = new AdamW(pa, { lr: 5e-3 });
    const ob = new AdamW(pb, { lr: 5e-3 });
    expect((await oa.get_state()).map((s) => s.step)).toEqual(pa.map(() => 0));
    for (let i = 0; i < 2; i++) {
      await a.forward(batch, { backward: true });
      await oa.step();
      await oa.zero_grad();
    }
    const state = await oa.get_state();
    expect(state.map((s) => s.step)).toEqual(pa.map(() => 2));
    for (const [i, p] of pb.entries()) await p.copy_(await pa[i].data());
    await ob.set_state(state);
    for (const [m, o] of [[a, oa], [b, ob]] as const) {
      await m.forward(batch, { backward: true });
      await o.step();
    }
    const va = await values(pa);
    const vb = await values(pb);
    va.forEach((v, i) => expect(maxRelErr(vb[i], v)).toBe(0));
  });

  test('the Trainer trains with exactly these: trainer.optimizer is AdamW over the adapter in HF\'s two groups', async () => {
    await using pm = peft();
    const rows = Array.from({ length: 4 }, (_, i) => ({ input_ids: [20 + i, 21, 22, 23], attention_mask: [1, 1, 1, 1], labels: [-100, 21, 22, 23] }));
    const args = new TrainingArguments({ output_dir: scratch, per_device_train_batch_size: 2, max_steps: 1, save_strategy: 'no', disable_tqdm: true, weight_decay: 0.1 });
    const log = jest.spyOn(console, 'log').mockImplementation(() => undefined);
    const trainer = new Trainer({ model: pm, args, train_dataset: rows, data_collator: leftPadCollator });
    await trainer.train();
    log.mockRestore();
    expect(trainer.optimizer).toBeInstanceOf(AdamW);
    expect(trainer.optimizer!.param_groups.map((g) => [g.params.map((p) => p.name), g.weight_decay])).toEqual([
      [['prompt_encoder.default.embedding.weight', 'prompt_encoder.default.transform.0.weight', 'prompt_encoder.default.transform.2.weight'], 0.1],
      [['prompt_encoder.default.transform.0.bias', 'prompt_encoder.default.transform.2.bias'], 0],
    ]);
  });

  test('named errors', async () => {
    await using pm = peft();
    const params = pm.parameters().filter((p) => p.requires_grad);
    expect((await rejection(() => new AdamW([{} as never]))).code).toBe('ERR_INVALID_INPUT');
    expect((await rejection(() => new AdamW(params, { lr: -1 }))).code).toBe('ERR_INVALID_INPUT');
    expect((await rejection(() => new AdamW(params, { betas: [1, 0.999] }))).code).toBe('ERR_INVALID_INPUT');
    expect((await rejection(() => new AdamW([{ params }, { params: [params[0]] }]))).code).toBe('ERR_INVALID_INPUT');
    expect((await rejection(clip_grad_norm_(params, 0))).code).toBe('ERR_INVALID_INPUT');
    expect((await rejection(clip_grad_norm_([{} as never], 1))).code).toBe('ERR_INVALID_INPUT');
    const o = new AdamW(params);
    expect((await rejection(o.set_state([]))).code).toBe('ERR_SHAPE_MISMATCH');
    await pm.dispose();
    expect((await rejection(o.step())).code).toBe('ERR_DISPOSED');
  });
});
