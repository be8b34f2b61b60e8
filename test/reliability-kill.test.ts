/**
 * A training process SIGKILLed while saving checkpoints never leaves a broken one behind: every `checkpoint-N` on disk
 * loads, partial writes exist only under temporary dot-names that resuming ignores (and the next save removes), and
 * resuming after the kill ends bit-identical to a run never interrupted (final prefix and AdamW state).
 *
 * A 20,000-token prefix makes each checkpoint ~40 MB. Kills land (1) at the critical moments, deterministically: the
 * child pauses half-way through writing optimizer.safetensors, just before renaming a finished checkpoint into
 * place, and half-way through rotating an old one out, and is killed there; (2) at seeded random moments inside
 * saves (timed from the end of an optimizer step, when the save starts), over a chain of kill-resume-kill runs.
 */
import { ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { AutoModelForCausalLM, BloomForCausalLM, PeftModel, readSafetensors } from '../lib';
import { clean_stale_temporaries, list_checkpoints, latest_checkpoint } from '../lib/trainer/checkpoint';
import { TrainerState } from '../lib/trainer/trainer_state';
import { TINY, tmpDir } from './helpers';

const DIST = path.resolve(__dirname, '..', 'dist');
const STEPS = 12;
const NVT = 20000;

// The child trains (resuming when a checkpoint exists) and prints a hash of its final prefix and AdamW state. It
// writes "E" when an optimizer step ends (its checkpoint save starts next), and with PAUSE=<what>:<n> it stops at the
// n-th such moment, writes "P" and waits to be killed.
const CHILD = `
const fs = require('node:fs'), path = require('node:path'), crypto = require('node:crypto');
const [what, nth] = (process.env.PAUSE || ':').split(':');
let seen = 0;
const pause = () => { process.stderr.write('P\\n'); Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 20000); };
const hit = () => ++seen === Number(nth);
const { writeFileSync, renameSync, rmSync } = fs;
fs.writeFileSync = (file, data, ...rest) => {
  if (what === 'write' && path.basename(String(file)) === 'optimizer.safetensors' && hit()) {
    writeFileSync(file, data.subarray(0, data.length >> 1)); // half of it on disk
    pause();
  }
  return writeFileSync(file, data, ...rest);
};
fs.renameSync = (from, to) => {
  if (what === 'rename' && /^checkpoint-\\d+$/.test(path.basename(String(to))) && hit()) pause();
  return renameSync(from, to);
};
fs.rmSync = (p, ...rest) => {
  if (what === 'rotate' && String(p).endsWith('-deleted') && hit()) {
    for (const f of fs.readdirSync(p).slice(0, 3)) rmSync(path.join(p, f)); // half deleted
    pause();
  }
  return rmSync(p, ...rest);
};
const P = require(${JSON.stringify(DIST)});
const [out, nvt, steps] = [process.argv[2], Number(process.argv[3]), Number(process.argv[4])];
(async () => {
  P.set_num_threads(1);
  console.log = () => undefined;
  const model = await P.AutoModelForCausalLM.from_pretrained(${JSON.stringify(TINY)});
  P.set_seed(3);
  const pm = P.get_peft_model(model, new P.PrefixTuningConfig({ task_type: 'CAUSAL_LM', num_virtual_tokens: nvt }));
  const rows = Array.from({ length: 16 }, (_, i) => {
    const ids = Array.from({ length: 6 }, (_, j) => 20 + ((i * 37 + j * 11) % 900));
    return { input_ids: ids, attention_mask: ids.map(() => 1), labels: ids };
  });
  const args = new P.TrainingArguments({ output_dir: out, per_device_train_batch_size: 2, max_steps: steps, save_steps: 1,
    save_total_limit: 2, logging_steps: 1, learning_rate: 1e-2, disable_tqdm: true });
  const resume = fs.existsSync(out) && fs.readdirSync(out).some((n) => /^checkpoint-\\d+$/.test(n));
  const marks = { on_step_end: () => { process.stderr.write('E\\n'); } };
  const trainer = new P.Trainer({ model: pm, args, train_dataset: rows, callbacks: [marks] });
  await trainer.train({ resume_from_checkpoint: resume || undefined });
  const enc = await pm.prompt_encoder();
  const h = crypto.createHash('sha256');
  for (const [n] of enc.parameter_shapes()) h.update(Buffer.from((await enc.get_parameter(n)).data.buffer));
  const opt = await trainer.optimizer.get_state();
  h.update(JSON.stringify(opt.map((s) => s.step)));
  for (const s of opt) for (const t of [s.exp_avg, s.exp_avg_sq]) h.update(Buffer.from(t.data.buffer));
  process.stdout.write('HASH ' + h.digest('hex') + '\\n');
})().catch((e) => { process.stderr.write(String(e && e.stack)); process.exit(3); });
`;

interface Run {
  code: number | null;
  signal: string | null;
  stdout: string;
  stderr: string;
}

let scratch: string;
let childFile: string;
let model: BloomForCausalLM;
let expected: string;
beforeAll(async () => {
  scratch = tmpDir('peft-node-kill-');
  childFile = path.join(scratch, 'child.js');
  fs.writeFileSync(childFile, CHILD);
  model = await AutoModelForCausalLM.from_pretrained(TINY);
  const reference = await runChild(path.join(scratch, 'reference'));
  expect([reference.code, errors(reference)]).toEqual([0, '']);
  expected = hashOf(reference);
}, 120000);
afterAll(async () => {
  await model.dispose();
  fs.rmSync(scratch, { recursive: true, force: true });
});

const errors = (r: Run) => r.stderr.replace(/^[EP]\n/gm, '');
const hashOf = (r: Run) => /HASH (\w+)/.exec(r.stdout)?.[1] ?? `no hash: ${r.stderr.slice(-500)}`;

/**
 * Runs the child. `kill`: SIGKILL it at its "P" (pause) mark, or `delayMs` after its `afterSteps`-th "E" mark (an
 * optimizer step ended: its checkpoint save is starting).
 */
function runChild(out: string, kill?: { pause?: string; afterSteps?: number; delayMs?: number }): Promise<Run> {
  return new Promise((resolve) => {
    const env = { ...process.env, PAUSE: kill?.pause ?? '' };
    const child: ChildProcess = spawn(process.execPath, [childFile, out, String(NVT), String(STEPS)], { stdio: ['ignore', 'pipe', 'pipe'], env });
    let stdout = '';
    let stderr = '';
    let timer: NodeJS.Timeout | undefined;
    child.stdout!.on('data', (d) => (stdout += d));
    child.stderr!.on('data', (d) => {
      stderr += d;
      if (!kill || timer) return;
      if (kill.pause && /^P$/m.test(stderr)) timer = setTimeout(() => child.kill('SIGKILL'), 0);
      else if (kill.afterSteps && (stderr.match(/^E$/gm) ?? []).length >= kill.afterSteps)
        timer = setTimeout(() => child.kill('SIGKILL'), kill.delayMs ?? 0);
    });
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

/** Every complete checkpoint loads: its JSON parses and validates, its tensors read, its adapter loads. */
async function checkCheckpoints(out: string): Promise<void> {
  for (const dir of list_checkpoints(out)) {
    const state = TrainerState.from_json_file(path.join(dir, 'trainer_state.json'));
    expect(path.basename(dir)).toBe(`checkpoint-${state.global_step}`);
    expect(readSafetensors(path.join(dir, 'trainable_state.safetensors')).tensors.get('embedding.weight')?.dims).toEqual([NVT, 128]);
    const opt = readSafetensors(path.join(dir, 'optimizer.safetensors'));
    expect(opt.metadata['step.embedding.weight']).toBe(String(state.global_step));
    expect(Object.keys(JSON.parse(fs.readFileSync(path.join(dir, 'resume_state.json'), 'utf8')))).toContain('tr_loss_bits');
    const adapter = await PeftModel.from_pretrained(model, dir);
    await adapter.dispose();
  }
}

const temporaries = (out: string) => (fs.existsSync(out) ? fs.readdirSync(out).filter((n) => n.startsWith('.')) : []);

test.each([
  ['half-way through writing optimizer.safetensors', 'write:3', /^\.checkpoint-3\.tmp-\d+-/],
  ['with checkpoint-3 fully written, just before renaming it into place', 'rename:3', /^\.checkpoint-3\.tmp-\d+-/],
  ['half-way through deleting checkpoint-2 (save_total_limit rotation)', 'rotate:2', /^\.checkpoint-2\.tmp-\d+-\d+-deleted$/],
])('killed %s: the partial write is ignored, the older checkpoints load, resuming ends as if never interrupted', async (_name, pause, leftover) => {
  const out = path.join(scratch, `pause-${pause.replace(':', '-')}`);
  const killed = await runChild(out, { pause });
  expect(killed.signal).toBe('SIGKILL');
  expect(temporaries(out).some((n) => leftover.test(n))).toBe(true);
  expect(path.basename(latest_checkpoint(out) ?? '')).toMatch(/^checkpoint-\d+$/);
  await checkCheckpoints(out);
  const resumed = await runChild(out);
  expect([resumed.code, errors(resumed)]).toEqual([0, '']);
  expect(hashOf(resumed)).toBe(expected);
  expect(temporaries(out)).toEqual([]); // removed by the resumed run's first save
}, 120000);

test('SIGKILL at seeded random moments inside saves, resuming after each: checkpoints always load, the end is bit-identical', async () => {
  const out = path.join(scratch, 'chain');
  let s = 20240611;
  const random = () => (s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32;
  let kills = 0;
  let partial = 0;
  let finished: Run | undefined;
  for (let trial = 0; trial < 10 && !finished; trial++) {
    const r = await runChild(out, { afterSteps: 1 + Math.floor(random() * 2), delayMs: Math.floor(random() * 100) });
    if (r.signal !== 'SIGKILL') {
      finished = r; // done before the kill (resuming a finished run would train past max_steps, as HF's loop does)
      break;
    }
    kills++;
    if (temporaries(out).some((n) => /\.tmp-\d+-/.test(n))) partial++;
    await checkCheckpoints(out);
  }
  finished ??= await runChild(out);
  expect([finished.code, errors(finished)]).toEqual([0, '']);
  expect(hashOf(finished)).toBe(expected);
  expect(temporaries(out)).toEqual([]);
  expect(list_checkpoints(out).map((d) => path.basename(d))).toEqual([`checkpoint-${STEPS - 1}`, `checkpoint-${STEPS}`]);
  expect(kills).toBeGreaterThanOrEqual(4);
  // eslint-disable-next-line no-console
  console.log(`${kills} SIGKILLs inside saves (${partial} left a partial checkpoint behind); the resumed end equals the uninterrupted run`);
}, 300000);

test('a half-deleted old checkpoint is never taken for a complete one; stale temporaries of dead processes are removed', () => {
  const out = path.join(scratch, 'rotation');
  fs.mkdirSync(path.join(out, '.checkpoint-2.tmp-999999999-1-deleted'), { recursive: true });
  fs.writeFileSync(path.join(out, '.checkpoint-2.tmp-999999999-1-deleted', 'trainer_state.json'), '{}');
  fs.mkdirSync(path.join(out, 'checkpoint-3'));
  expect(list_checkpoints(out)).toEqual([]); // no trainer_state.json yet: incomplete
  fs.writeFileSync(path.join(out, 'checkpoint-3', 'trainer_state.json'), '{}');
  expect(list_checkpoints(out)).toEqual([path.join(out, 'checkpoint-3')]);
  const mine = `.checkpoint-4.tmp-${process.pid}-1-0`; // a live process (this one) may be writing it
  fs.mkdirSync(path.join(out, mine));
  clean_stale_temporaries(out);
  expect(fs.readdirSync(out).sort()).toEqual([mine, 'checkpoint-3']);
});
