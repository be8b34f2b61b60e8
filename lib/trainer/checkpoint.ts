/**
 * Checkpoints: `output_dir/checkpoint-N/` with the PEFT-format adapter (loadable by Python PEFT), the full trainable
 * state (the projection MLP too), AdamW state, the scheduler position, the sampler position and loss accumulators
 * (so a resumed run is bit-identical), trainer_state.json in HF's schema, and the learning curve. Each checkpoint is
 * written to a temporary directory and renamed into place: a crash never leaves a half checkpoint.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { PeftNodeError } from '../errors';
import { PeftModelForCausalLM } from '../peft/peft_model';
import { Parameter } from '../nn/parameter';
import { AdamW, AdamWParamState } from '../optim/adamw';
import { Tensor } from '../tensor';
import { writeDirAtomic, writeFileAtomic } from '../utils/fs_atomic';
import { readJsonObject } from '../utils/python_json';
import { readSafetensors, serializeSafetensors } from '../utils/safetensors';
import { loss_svg } from './loss_plot';
import { TrainingArguments } from './training_args';
import { TrainerState } from './trainer_state';

/** What HF does not save but exact resumption needs: the loss accumulators of the current logging window. */
export interface ResumeState {
  tr_loss: number;
  total_loss_scalar: number;
  globalstep_last_logged: number;
  current_flos: number;
  /** Data-parallel runs: each rank's own accumulators, in rank order (tr_loss, current_flos above are rank 0's). */
  ranks?: { tr_loss: number; current_flos: number }[];
}

// A float32 loss accumulator as 8 hex digits (its exact bits; JSON would print NaN as null) and back.
const f32hex = (v: number) => Buffer.from(new Float32Array([v]).buffer).toString('hex');
const hexf32 = (hex: string) => new Float32Array(new Uint8Array(Buffer.from(hex, 'hex')).buffer)[0];

const PREFIX = 'checkpoint-';
const TRAINABLE = 'trainable_state.safetensors';
const OPTIMIZER = 'optimizer.safetensors';
const RESUME = 'resume_state.json';

/** Complete checkpoints in `output_dir`, oldest first (temporary directories start with a dot and are ignored). */
export function list_checkpoints(output_dir: string): string[] {
  if (!fs.existsSync(output_dir)) return [];
  return fs
    .readdirSync(output_dir)
    .filter((n) => new RegExp(`^${PREFIX}\\d+$`).test(n) && fs.existsSync(path.join(output_dir, n, 'trainer_state.json')))
    .sort((a, b) => Number(a.slice(PREFIX.length)) - Number(b.slice(PREFIX.length)))
    .map((n) => path.join(output_dir, n));
}

export function latest_checkpoint(output_dir: string): string | undefined {
  return list_checkpoints(output_dir).at(-1);
}

/**
 * HF's _rotate_checkpoints: delete the oldest checkpoints beyond `limit`. Each is first renamed to a temporary
 * (dot) name, atomically, so a process killed while deleting never leaves a half-deleted directory that still looks
 * like a complete checkpoint.
 */
export function rotate_checkpoints(output_dir: string, limit: number): void {
  // Also what a process killed while rotating left (a run resumed from its final checkpoint saves nothing to do it).
  clean_stale_temporaries(output_dir);
  const all = list_checkpoints(output_dir);
  for (const dir of all.slice(0, Math.max(0, all.length - limit))) {
    const doomed = path.join(output_dir, `.${path.basename(dir)}.tmp-${process.pid}-${Date.now()}-deleted`);
    fs.renameSync(dir, doomed);
    fs.rmSync(doomed, { recursive: true, force: true });
  }
}

/** `.<name>.tmp-<pid>-…` entries of `output_dir` left by processes that died while writing or deleting. */
export function clean_stale_temporaries(output_dir: string): void {
  let names: string[];
  try {
    names = fs.readdirSync(output_dir);
  } catch {
    return;
  }
  for (const n of names) {
    const pid = /^\..+\.tmp-(\d+)-/.exec(n)?.[1];
    if (pid === undefined || Number(pid) === process.pid || isAlive(Number(pid))) continue;
    fs.rmSync(path.join(output_dir, n), { recursive: true, force: true });
  }
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM'; // exists, owned by someone else
  }
}

/**
 * What a checkpoint holds of the training: the trainable parameters under their checkpoint names (the adapter's own
 * names, e.g. `embedding.weight`) and the optimizer over them.
 */
export interface TrainingStateRefs {
  parameters: [string, Parameter][];
  optimizer: AdamW;
}

/** The optimizer's per-parameter state by checkpoint name (parameters it does not hold are absent). */
async function optimizerStateByName(t: TrainingStateRefs): Promise<Map<string, AdamWParamState>> {
  const nameOf = new Map(t.parameters.map(([n, p]) => [p, n] as const));
  const order = t.optimizer.param_groups.flatMap((g) => g.params);
  const states = await t.optimizer.get_state();
  return new Map(order.map((p, i) => [nameOf.get(p) ?? p.name, states[i]] as const));
}

export async function save_checkpoint(opts: {
  output_dir: string;
  model: PeftModelForCausalLM;
  training: TrainingStateRefs;
  state: TrainerState;
  args: TrainingArguments;
  resume: ResumeState;
  tokenizer?: { save_pretrained?(dir: string): unknown };
}): Promise<string> {
  const { training, state } = opts;
  const dir = path.join(opts.output_dir, `${PREFIX}${state.global_step}`);
  // Everything async first; then one synchronous write into a temporary directory.
  const params: [string, Tensor][] = [];
  for (const [n, p] of training.parameters) params.push([n, await p.data()]);
  const byName = await optimizerStateByName(training);
  const stepped = [...byName.values()].some((st) => st.step > 0); // torch has no state before the first step
  const optTensors: [string, Tensor][] = [];
  const optMeta: Record<string, string> = { format: 'pt' };
  if (stepped)
    for (const [n] of training.parameters) {
      const st = byName.get(n);
      if (!st) continue;
      optMeta[`step.${n}`] = String(st.step);
      if (st.exp_avg) optTensors.push([`exp_avg.${n}`, st.exp_avg]);
      if (st.exp_avg_sq) optTensors.push([`exp_avg_sq.${n}`, st.exp_avg_sq]);
    }
  // Temporaries live in output_dir under names clean_stale_temporaries recognises, so a killed save leaks nothing.
  fs.mkdirSync(opts.output_dir, { recursive: true });
  clean_stale_temporaries(opts.output_dir);
  const adapterTmp = path.join(opts.output_dir, `.adapter.tmp-${process.pid}-${Date.now()}`);
  try {
    await opts.model.save_pretrained(adapterTmp);
    await opts.tokenizer?.save_pretrained?.(adapterTmp); // tokenizer files beside the adapter, as HF's checkpoints
    writeDirAtomic(dir, (tmp) => {
      for (const f of fs.readdirSync(adapterTmp)) fs.cpSync(path.join(adapterTmp, f), path.join(tmp, f), { recursive: true });
      fs.writeFileSync(path.join(tmp, TRAINABLE), serializeSafetensors(params, { format: 'pt' }));
      fs.writeFileSync(path.join(tmp, OPTIMIZER), serializeSafetensors(optTensors, optMeta));
      const { ranks, ...own } = opts.resume;
      const record = {
        ...own,
        tr_loss_bits: f32hex(own.tr_loss),
        world_size: ranks?.length ?? 1,
        ...(ranks ? { ranks: ranks.map((r) => ({ tr_loss_bits: f32hex(r.tr_loss), current_flos: r.current_flos })) } : {}),
      };
      fs.writeFileSync(path.join(tmp, RESUME), JSON.stringify(record, null, 2));
      fs.writeFileSync(path.join(tmp, 'training_args.json'), JSON.stringify(opts.args.to_dict(), null, 2));
      fs.writeFileSync(path.join(tmp, 'loss.svg'), loss_svg(state.log_history));
      fs.writeFileSync(path.join(tmp, 'trainer_state.json'), state.to_json_string()); // last: marks the checkpoint complete
    });
  } finally {
    fs.rmSync(adapterTmp, { recursive: true, force: true });
  }
  writeFileAtomic(path.join(opts.output_dir, 'loss.svg'), loss_svg(state.log_history));
  return dir;
}

/**
 * Loads a checkpoint into the trainable parameters and the optimizer and returns the Trainer state to continue from. `process` says which rank of how
 * many is resuming: the same world size as the run that saved it continues each rank's loss window exactly; another
 * world size shares the window out so that the next logged loss is still right (and warns: each update then sees
 * a different batch than before).
 */
export async function load_checkpoint(
  dir: string,
  training: TrainingStateRefs,
  process_: { rank: number; world_size: number } = { rank: 0, world_size: 1 },
): Promise<{ state: TrainerState; resume: ResumeState }> {
  const need = (f: string) => {
    const p = path.join(dir, f);
    if (!fs.existsSync(p)) throw new PeftNodeError('ERR_FILE_NOT_FOUND', `checkpoint ${dir} is incomplete: ${f} not found`);
    return p;
  };
  const state = TrainerState.from_json_file(need('trainer_state.json'));
  const params = readSafetensors(need(TRAINABLE)).tensors;
  const names = training.parameters.map(([n]) => n);
  for (const [n, p] of training.parameters) {
    const t = params.get(n);
    if (!t) throw new PeftNodeError('ERR_WEIGHT_MISSING', `${path.join(dir, TRAINABLE)} has no '${n}': the checkpoint is for another prefix configuration`);
    if (t.dims.join() !== p.shape.join()) throw new PeftNodeError('ERR_SHAPE_MISMATCH', `${path.join(dir, TRAINABLE)}: '${n}' has shape [${t.dims}], the model expects [${p.shape}]`);
    await p.copy_(t);
  }
  const optFile = need(OPTIMIZER);
  const opt = readSafetensors(optFile);
  const steps = names.map((n) => opt.metadata[`step.${n}`]);
  for (const [i, st] of steps.entries())
    if (st !== undefined && !(/^\d{1,15}$/.test(st) && Number.isSafeInteger(Number(st))))
      throw new PeftNodeError('ERR_CONFIG', `${optFile}: metadata 'step.${names[i]}' must be a non-negative integer, got ${JSON.stringify(st)}`);
  if (steps.every((s) => s !== undefined)) {
    const shapeOf = new Map(training.parameters.map(([n, p]) => [n, p.shape] as const));
    const tensor = (key: string, n: string) => {
      const t = opt.tensors.get(key);
      if (t && t.dims.join() !== shapeOf.get(n)!.join())
        throw new PeftNodeError('ERR_SHAPE_MISMATCH', `${optFile}: '${key}' has shape [${t.dims}], the parameter has [${shapeOf.get(n)}]`);
      if (t && t.type !== 'float32' && t.type !== 'float64') throw new PeftNodeError('ERR_CONFIG', `${optFile}: '${key}' must be F32 or F64, got ${t.type}`);
      return t && t.type === 'float64' ? new Tensor('float32', Float32Array.from(t.data as Float64Array), t.dims) : (t ?? null);
    };
    const byName = new Map(names.map((n, i) => [n, { step: Number(steps[i]), exp_avg: tensor(`exp_avg.${n}`, n), exp_avg_sq: tensor(`exp_avg_sq.${n}`, n) }] as const));
    const nameOf = new Map(training.parameters.map(([n, p]) => [p, n] as const));
    const order = training.optimizer.param_groups.flatMap((g) => g.params);
    await training.optimizer.set_state(order.map((p) => byName.get(nameOf.get(p) ?? p.name) ?? { step: 0, exp_avg: null, exp_avg_sq: null }));
  }
  return { state, resume: read_resume_state(need(RESUME), state.global_step, process_) };
}

/** resume_state.json, validated: a corrupt file is ERR_JSON / ERR_CONFIG naming it, never a SyntaxError or garbage state. */
function read_resume_state(file: string, global_step: number, process_: { rank: number; world_size: number }): ResumeState {
  const raw = readJsonObject(file);
  const bad = (what: string) => new PeftNodeError('ERR_CONFIG', `${file}: ${what}`);
  // JSON.stringify writes NaN and ±inf as null: a null loss accumulator stands for a non-finite one.
  const num = (k: string): number => {
    const v = raw[k];
    if (v === null) return NaN;
    if (typeof v !== 'number') throw bad(`'${k}' must be a number, got ${JSON.stringify(v)}`);
    return v;
  };
  let tr_loss: number;
  if (raw.tr_loss_bits !== undefined) {
    if (typeof raw.tr_loss_bits !== 'string' || !/^[0-9a-fA-F]{8}$/.test(raw.tr_loss_bits))
      throw bad(`'tr_loss_bits' must be 8 hex digits (a float32), got ${JSON.stringify(raw.tr_loss_bits)}`);
    tr_loss = hexf32(raw.tr_loss_bits);
  } else tr_loss = num('tr_loss');
  const last = raw.globalstep_last_logged;
  if (!Number.isSafeInteger(last) || (last as number) < 0 || (last as number) > global_step)
    throw bad(`'globalstep_last_logged' must be an integer in [0, global_step = ${global_step}], got ${JSON.stringify(last)}`);
  const current_flos = num('current_flos');
  if (!(current_flos >= 0) || !Number.isFinite(current_flos)) throw bad(`'current_flos' must be a finite number >= 0, got ${JSON.stringify(raw.current_flos)}`);
  // Each rank's window (one entry for a single-process run).
  let ranks = [{ tr_loss, current_flos }];
  if (raw.ranks !== undefined) {
    if (!Array.isArray(raw.ranks) || raw.ranks.length < 2 || raw.world_size !== raw.ranks.length)
      throw bad(`'ranks' must list one entry per process of 'world_size', got ${JSON.stringify(raw.ranks).slice(0, 80)}`);
    ranks = raw.ranks.map((r: unknown, i: number) => {
      const e = r as Record<string, unknown>;
      if (typeof e?.tr_loss_bits !== 'string' || !/^[0-9a-fA-F]{8}$/.test(e.tr_loss_bits) || typeof e.current_flos !== 'number' || !(e.current_flos >= 0))
        throw bad(`'ranks[${i}]' must be { tr_loss_bits: 8 hex digits, current_flos: a number >= 0 }, got ${JSON.stringify(r).slice(0, 80)}`);
      return { tr_loss: hexf32(e.tr_loss_bits), current_flos: e.current_flos };
    });
  }
  const saved = ranks.length;
  let mine: { tr_loss: number; current_flos: number };
  if (saved === process_.world_size) mine = ranks[process_.rank];
  else {
    // The logged loss is the mean of the ranks' windows: give every new rank that mean, and share the FLOPs out.
    let sum = 0;
    for (const r of ranks) sum = Math.fround(sum + r.tr_loss);
    mine = { tr_loss: Math.fround(sum / saved), current_flos: ranks.reduce((s, r) => s + r.current_flos, 0) / process_.world_size };
    if (process_.rank === 0)
      process.emitWarning(
        `${path.dirname(file)} was saved by ${saved} process${saved === 1 ? '' : 'es'} and is resumed by ${process_.world_size}: ` +
          'training continues, but each update now averages a different number of batches than the original run',
        'PeftNodeWarning',
      );
  }
  return { tr_loss: mine.tr_loss, total_loss_scalar: num('total_loss_scalar'), globalstep_last_logged: last as number, current_flos: mine.current_flos };
}
