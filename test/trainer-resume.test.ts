/**
 * Beyond HF (peft#2256): a run stopped and resumed from its checkpoint ends bit-identical to an uninterrupted run —
 * final prefix (projection MLP included) and log. Also: stopping with an AbortSignal saves a checkpoint and resolves;
 * checkpoints rotate; TrainingArguments refuses unknown or invalid options.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { AutoModelForCausalLM, BloomForCausalLM, PeftModel, PrefixTuningConfig, Trainer, TrainingArguments, get_peft_model, set_seed } from '../lib';
import { randperm } from '../lib/utils/torch_random';
import { TINY, asNumbers, leftPadCollator as pad, tmpDir } from './helpers';

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

// 11 rows of different lengths: with bs 2 and GA 2 an epoch has 6 batches = 2 full windows + one of 2... and 1 leftover row.
const rows = Array.from({ length: 11 }, (_, i) => {
  const ids = Array.from({ length: 4 + (i % 5) }, (_, j) => 20 + ((i * 37 + j * 11) % 900));
  return { input_ids: ids, attention_mask: ids.map(() => 1), labels: ids.map((v, j) => (j < 2 ? -100 : v)) };
});

function args(output_dir: string, extra: Partial<ConstructorParameters<typeof TrainingArguments>[0]> = {}) {
  return new TrainingArguments({
    output_dir, per_device_train_batch_size: 2, gradient_accumulation_steps: 2, learning_rate: 5e-3, max_steps: 8,
    logging_steps: 1, save_steps: 3, disable_tqdm: true, ...extra,
  });
}

async function freshModel(seed: number) {
  set_seed(seed);
  return get_peft_model(model, new PrefixTuningConfig({ task_type: 'CAUSAL_LM', num_virtual_tokens: 3, prefix_projection: true, encoder_hidden_size: 8 }));
}

async function finalParams(pm: Awaited<ReturnType<typeof freshModel>>) {
  const out: Record<string, number[]> = {};
  for (const [n, p] of pm.named_parameters().filter(([, p]) => p.requires_grad)) out[n] = Array.from(asNumbers(await p.data()));
  return out;
}

const TIMING = /runtime|per_second/;
const withoutTiming = (log: Record<string, number>[]) => log.map((e) => Object.fromEntries(Object.entries(e).filter(([k]) => !TIMING.test(k))));

test('stop at step 3 (AbortSignal), resume from the checkpoint: final prefix and log equal an uninterrupted run, bit for bit', async () => {
  jest.spyOn(console, 'log').mockImplementation(() => undefined);
  const full = await freshModel(11);
  const fullTrainer = new Trainer({ model: full, args: args(path.join(scratch, 'full')), train_dataset: rows, data_collator: pad });
  const fullOut = await fullTrainer.train();
  expect(fullOut.global_step).toBe(8);

  const first = await freshModel(11);
  const controller = new AbortController();
  const stopAt3 = { on_step_end: (_a: unknown, state: { global_step: number }) => { if (state.global_step === 3) controller.abort(); } };
  const out1 = await new Trainer({ model: first, args: args(path.join(scratch, 'split'), { save_steps: 100 }), train_dataset: rows, data_collator: pad, callbacks: [stopAt3] }).train({ signal: controller.signal });
  expect(out1).toMatchObject({ global_step: 3, interrupted: true });
  expect(fs.readdirSync(path.join(scratch, 'split')).filter((f) => f.startsWith('checkpoint-'))).toEqual(['checkpoint-3']);
  await first.dispose();

  const second = await freshModel(999); // different init: everything must come from the checkpoint
  const resumed = new Trainer({ model: second, args: args(path.join(scratch, 'split'), { save_steps: 100 }), train_dataset: rows, data_collator: pad });
  const out2 = await resumed.train({ resume_from_checkpoint: true });
  expect(out2.global_step).toBe(8);
  expect(await finalParams(second)).toEqual(await finalParams(full));
  expect(withoutTiming(resumed.state.log_history)).toEqual(withoutTiming(fullTrainer.state.log_history));
  expect(out2.training_loss).toBe(fullOut.training_loss);
  await second.dispose();
  await full.dispose();
  (console.log as jest.Mock).mockRestore();
});

test('checkpoints: the PEFT adapter loads with PeftModel.from_pretrained; save_total_limit rotates; trainer_state.json is HF-shaped', async () => {
  jest.spyOn(console, 'log').mockImplementation(() => undefined);
  const out_dir = path.join(scratch, 'rotate');
  const pm = await freshModel(5);
  await new Trainer({ model: pm, args: args(out_dir, { save_steps: 2, save_total_limit: 2 }), train_dataset: rows, data_collator: pad }).train();
  expect(fs.readdirSync(out_dir).filter((f) => f.startsWith('checkpoint-')).sort()).toEqual(['checkpoint-6', 'checkpoint-8']);
  expect(fs.readdirSync(out_dir).some((f) => f.startsWith('.'))).toBe(false); // no temporary leftovers
  const ckpt = path.join(out_dir, 'checkpoint-8');
  const state = JSON.parse(fs.readFileSync(path.join(ckpt, 'trainer_state.json'), 'utf8'));
  expect(state).toMatchObject({ global_step: 8, max_steps: 8, logging_steps: 1, save_steps: 2, train_batch_size: 2 });
  expect(state.log_history).toHaveLength(8);
  expect(fs.readFileSync(path.join(ckpt, 'loss.svg'), 'utf8')).toContain('<polyline');
  const loaded = await PeftModel.from_pretrained(model, ckpt);
  const a = await loaded.forward({ input_ids: [rows[0].input_ids] });
  const b = await pm.eval().forward({ input_ids: [rows[0].input_ids] });
  expect(Math.max(...asNumbers(a.logits!).map((v, i) => Math.abs(v - asNumbers(b.logits!)[i])))).toBeLessThan(1e-5);
  await loaded.dispose();
  await pm.dispose();
  (console.log as jest.Mock).mockRestore();
});

test("torch.randperm's order (seed 42, N = 43) starts 17, 24, 36, 0, 34, 38, 11, 39", () => {
  expect(randperm(43, 42).slice(0, 8)).toEqual([17, 24, 36, 0, 34, 38, 11, 39]);
  expect([...randperm(43, 42)].sort((x, y) => x - y)).toEqual(Array.from({ length: 43 }, (_, i) => i));
});

test.each([
  [{ learning_rat: 1e-3 }, "unknown option 'learning_rat'"],
  [{ per_device_train_batch_size: 0 }, 'per_device_train_batch_size must be a positive integer, got 0'],
  [{ lr_scheduler_type: 'polynomial' }, 'lr_scheduler_type must be one of linear, cosine, constant, constant_with_warmup'],
  [{ logging_steps: 2.5 }, 'logging_steps must be a positive integer, or a fraction'],
  [{ max_steps: 0 }, 'max_steps must be a positive integer or -1'],
  [{ optim: 'sgd' }, 'optim must be one of adamw_torch, adamw_torch_fused'],
  [{ report_to: 'wandb' }, 'report_to can only be "none"'],
  [{ adam_beta1: 1.5 }, 'adam_beta1 must be in [0, 1)'],
])('TrainingArguments(%j) is refused', (options, message) => {
  expect(() => new TrainingArguments(options as never)).toThrow(message);
});

test('resuming from the final checkpoint trains nothing more: the prefix stays that of the finished run', async () => {
  jest.spyOn(console, 'log').mockImplementation(() => undefined);
  const out_dir = path.join(scratch, 'finished');
  const pm = await freshModel(21);
  await new Trainer({ model: pm, args: args(out_dir, { max_steps: 4, save_steps: 2 }), train_dataset: rows, data_collator: pad }).train();
  const done = await finalParams(pm);
  const again = await freshModel(22);
  const out = await new Trainer({ model: again, args: args(out_dir, { max_steps: 4, save_steps: 2 }), train_dataset: rows, data_collator: pad }).train({ resume_from_checkpoint: true });
  expect(out.global_step).toBe(4);
  expect(await finalParams(again)).toEqual(done);
  await pm.dispose();
  await again.dispose();
  (console.log as jest.Mock).mockRestore();
});
