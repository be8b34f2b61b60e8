/**
 * The Trainer for people: evaluate() as HF computes eval_loss, a progress bar on a TTY, plain log lines otherwise,
 * and Ctrl-C (SIGINT) stopping after the current step with a checkpoint saved, while the process stays alive.
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { AutoModelForCausalLM, BloomForCausalLM, PrefixTuningConfig, ProgressCallback, Trainer, TrainingArguments, get_peft_model } from '../lib';
import { TINY, leftPadCollator as pad, tmpDir } from './helpers';

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

const rows = Array.from({ length: 6 }, (_, i) => {
  const ids = Array.from({ length: 5 + i }, (_, j) => 30 + ((i * 13 + j * 7) % 900));
  return { input_ids: ids, attention_mask: ids.map(() => 1), labels: ids.map((v, j) => (j < 2 ? -100 : v)) };
});

test("evaluate(): eval_loss is the mean of each batch's mean token loss, weighted by batch size", async () => {
  const pm = get_peft_model(model, new PrefixTuningConfig({ task_type: 'CAUSAL_LM', num_virtual_tokens: 2 }));
  const args = new TrainingArguments({ output_dir: path.join(scratch, 'eval'), per_device_eval_batch_size: 4, disable_tqdm: true });
  const log = jest.spyOn(console, 'log').mockImplementation(() => undefined);
  const metrics = await new Trainer({ model: pm, args, eval_dataset: rows, data_collator: pad }).evaluate();
  log.mockRestore();
  // The same computation as the Trainer's (no logits returned), so equal to the last bit.
  const a = await pm.forward(pad(rows.slice(0, 4)), { return_logits: false });
  const b = await pm.forward(pad(rows.slice(4)), { return_logits: false });
  expect(metrics.eval_loss).toBeCloseTo((a.loss! * 4 + b.loss! * 2) / 6, 12);
  expect(Object.keys(metrics)).toEqual(['eval_loss', 'eval_runtime', 'eval_samples_per_second', 'eval_steps_per_second']);
  await pm.dispose();
});

test('a progress bar on a TTY stream: steps, it/s and the logged loss; log lines printed above it', async () => {
  let out = '';
  const stream = Object.assign(Object.create(process.stderr), {
    isTTY: true,
    columns: 100,
    write: (s: string) => ((out += s), true),
    cursorTo: () => true,
    clearLine: () => true,
    moveCursor: () => true,
  }) as NodeJS.WriteStream;
  const pm = get_peft_model(model, new PrefixTuningConfig({ task_type: 'CAUSAL_LM', num_virtual_tokens: 2 }));
  const args = new TrainingArguments({ output_dir: path.join(scratch, 'bar'), per_device_train_batch_size: 2, max_steps: 3, logging_steps: 1, save_strategy: 'no', disable_tqdm: true });
  const trainer = new Trainer({ model: pm, args, train_dataset: rows, data_collator: pad, callbacks: [new ProgressCallback(stream)] });
  trainer.callbacks.splice(0, 1); // keep only the TTY bar (drop the default line printer)
  await trainer.train();
  expect(out).toMatch(/3\/3/);
  expect(out).toMatch(/it\/s/);
  expect(out).toMatch(/\{'loss': '[\d.]+', 'grad_norm': '[\d.e+-]+', 'learning_rate': '[\d.e+-]+', 'epoch': '[\d.]+'\}/);
  await pm.dispose();
});

test('Ctrl-C stops after the current step, saves a checkpoint and train() resolves (the process exits 0)', async () => {
  const out_dir = path.join(scratch, 'sigint');
  const script = `
    const { AutoModelForCausalLM, PrefixTuningConfig, Trainer, TrainingArguments, get_peft_model } = require(${JSON.stringify(path.resolve(__dirname, '..', 'dist'))});
    (async () => {
      const model = await AutoModelForCausalLM.from_pretrained(${JSON.stringify(TINY)});
      const pm = get_peft_model(model, new PrefixTuningConfig({ task_type: 'CAUSAL_LM', num_virtual_tokens: 2 }));
      const rows = Array.from({ length: 8 }, (_, i) => { const ids = [20 + i, 21, 22, 23]; return { input_ids: ids, attention_mask: [1, 1, 1, 1], labels: ids }; });
      const args = new TrainingArguments({ output_dir: ${JSON.stringify(out_dir)}, per_device_train_batch_size: 2, max_steps: 100000, logging_steps: 1, save_steps: 1000000, disable_tqdm: true });
      const slow = { on_step_end: () => new Promise((r) => setTimeout(r, 20)) };
      const out = await new Trainer({ model: pm, args, train_dataset: rows, callbacks: [slow] }).train();
      console.log('RESULT ' + JSON.stringify({ global_step: out.global_step, interrupted: out.interrupted }));
      await pm.dispose(); await model.dispose();
    })();`;
  const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  const sent = new Promise<void>((resolve) => {
    child.stdout.on('data', (d) => {
      stdout += d;
      if ((stdout.match(/'loss'/g) ?? []).length >= 3 && !child.killed) {
        child.kill('SIGINT');
        resolve();
      }
    });
  });
  const code = await new Promise<number | null>((resolve) => child.on('exit', resolve));
  await sent;
  expect([code, stderr]).toEqual([0, '']);
  const result = JSON.parse(/RESULT (.*)/.exec(stdout)![1]);
  expect(result.interrupted).toBe(true);
  expect(result.global_step).toBeGreaterThanOrEqual(3);
  expect(fs.existsSync(path.join(out_dir, `checkpoint-${result.global_step}`, 'trainer_state.json'))).toBe(true);
});
