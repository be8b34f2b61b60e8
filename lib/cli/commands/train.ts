/**
 * `peft-node train`: the seed notebook as a command — load_dataset("json") → AutoTokenizer → map(process_func) with
 * the Human/Assistant template → AutoModelForCausalLM → PrefixTuningConfig → get_peft_model →
 * print_trainable_parameters → TrainingArguments → Trainer(DataCollatorForSeq2Seq) → train → save_pretrained.
 * Without flags it trains the embedded tiny BLOOM on the embedded demo rows.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Argv } from 'yargs';
import { DataCollatorForSeq2Seq } from '../../data/data_collator';
import { Dataset, Row } from '../../data/dataset';
import { load_dataset } from '../../data/load_dataset';
import { distributed_env } from '../../distributed/process_group';
import { describe_exit, launch } from '../../distributed/launch';
import { PeftNodeError } from '../../errors';
import { AutoModelForCausalLM } from '../../models/auto';
import { BloomConfig } from '../../models/bloom/configuration_bloom';
import type { AttnImplementation } from '../../models/bloom/modeling_bloom';
import { PrefixTuningConfig, TaskType } from '../../peft/config';
import { PeftModelForCausalLM, get_peft_model } from '../../peft/peft_model';
import { set_seed } from '../../runtime/rng';
import { AutoTokenizer } from '../../tokenizer/auto';
import { PreTrainedTokenizer } from '../../tokenizer/tokenization_utils';
import { latest_checkpoint } from '../../trainer/checkpoint';
import { Trainer } from '../../trainer/trainer';
import { TrainingArguments } from '../../trainer/training_args';
import {
  Args,
  RAW_ARGV,
  EMBEDDED_DATA,
  EMBEDDED_MODEL,
  UsageError,
  device_flag,
  int_flag,
  model_options,
  note,
  out as say,
  PACKAGE_ROOT,
  positive_flag,
  require_dir,
  require_model_dir,
  steps_flag,
  string_flag,
  write_last_adapter,
} from '../common';

/**
 * HF's defaults, and the embedded demo model's: the tiny random BLOOM only moves with big steps, so without --model
 * the defaults are 10 epochs (40 optimizer steps on the 32 demo rows) at lr 0.3, logged every 4 steps, which takes
 * the loss from about 7.5 to 6.6 in a second.
 */
export const HF_LEARNING_RATE = 5e-5;
export const DEMO_LEARNING_RATE = 0.3;
export const DEMO_EPOCHS = 10;
export const DEMO_LOGGING_STEPS = 4;
export const DEFAULT_OUTPUT_DIR = 'peft-node-output';

export const command = 'train';
export const describe = 'Prefix-tune a BLOOM model on instruction data (the seed notebook); no flags: the embedded demo';

export function builder(y: Argv): Argv {
  return model_options(
    y
      .option('model', { type: 'string', describe: 'BLOOM model directory (config.json, safetensors, tokenizer.json)', defaultDescription: 'the embedded tiny BLOOM' })
      .option('data', {
        type: 'string',
        describe: 'JSON / JSON Lines file, or a directory of them, with instruction / input / output rows',
        defaultDescription: 'the embedded 32 demo rows',
      })
      .option('output', { type: 'string', alias: 'o', describe: 'output directory: checkpoints, and the adapter in <output>/adapter', default: `./${DEFAULT_OUTPUT_DIR}` })
      .option('num-virtual-tokens', { type: 'number', describe: 'prefix length (PrefixTuningConfig.num_virtual_tokens)', default: 10 })
      .option('prefix-projection', { type: 'boolean', describe: 'generate the prefix with an MLP (Embedding → Linear → Tanh → Linear)', default: false })
      .option('encoder-hidden-size', { type: 'number', describe: "the MLP's hidden size with --prefix-projection", defaultDescription: "the model's hidden_size" })
      .option('epochs', { type: 'number', describe: 'num_train_epochs', defaultDescription: `1; ${DEMO_EPOCHS} with the embedded model` })
      .option('max-steps', { type: 'number', describe: 'optimizer steps; overrides --epochs' })
      .option('batch-size', { type: 'number', describe: 'per_device_train_batch_size', default: 1 })
      .option('grad-accum', { type: 'number', describe: 'gradient_accumulation_steps', default: 8 })
      .option('lr', { type: 'number', describe: 'learning_rate', defaultDescription: `${HF_LEARNING_RATE} (HF's); ${DEMO_LEARNING_RATE} with the embedded model` })
      .option('logging-steps', { type: 'number', describe: 'log the loss every N optimizer steps', defaultDescription: `10; ${DEMO_LOGGING_STEPS} with the embedded model` })
      .option('save-steps', { type: 'number', describe: 'save a checkpoint every N optimizer steps (and at the end)', default: 500 })
      .option('max-length', { type: 'number', describe: 'truncate each tokenized example to this many tokens', default: 256 })
      .option('seed', { type: 'number', describe: 'seed of the prefix initialisation and the sample order', default: 42 })
      .option('resume', {
        type: 'string',
        describe: 'continue from a checkpoint directory, or (no value) from the latest checkpoint in --output',
      })
      .option('nproc', { type: 'number', describe: 'data-parallel worker processes on this machine (torchrun --nproc-per-node)', default: 1 })
      .option('nnodes', { type: 'number', describe: 'machines taking part; run the same command on each with its --node-rank', default: 1 })
      .option('node-rank', { type: 'number', describe: "this machine's index among --nnodes", default: 0 })
      .option('master-addr', { type: 'string', describe: 'address of the machine of rank 0, where the workers meet', default: '127.0.0.1' })
      .option('master-port', { type: 'number', describe: 'port of that meeting point', defaultDescription: 'a free port; 29500 with --nnodes > 1' })
      .option('ddp-timeout', { type: 'number', describe: 'seconds a worker waits for the others before failing (TrainingArguments.ddp_timeout)', default: 1800 }),
  )
    .example('$0 train', 'the demo: the embedded tiny BLOOM on the embedded rows (10 epochs, lr 0.3; about a second)')
    .example('$0 train --model ./bloom-1b4-zh --data ./alpaca_data_zh/ --output ./chatbot', 'the seed notebook: 1 epoch, batch 1 × 8 accumulated, lr 5e-5')
    .example('$0 train --model ./bloom-1b4-zh --data rows.jsonl --prefix-projection --max-steps 100', 'prefix generated by an MLP, 100 optimizer steps')
    .example('$0 train --output ./chatbot --resume', 'continue an interrupted run from its latest checkpoint')
    .example('$0 train --nproc 2', 'the demo on 2 data-parallel processes: each update sees twice the batch');
}

interface TrainFlags {
  model: string;
  data: string;
  output: string;
  demo: boolean;
  num_virtual_tokens: number;
  prefix_projection: boolean;
  encoder_hidden_size?: number;
  epochs: number;
  max_steps?: number;
  batch_size: number;
  grad_accum: number;
  lr: number;
  logging_steps: number;
  save_steps: number;
  max_length: number;
  seed: number;
  device: string;
  dtype: string;
  attn_implementation: AttnImplementation;
  resume?: string | true;
  nproc: number;
  nnodes: number;
  node_rank: number;
  master_addr: string;
  master_port?: number;
  ddp_timeout: number;
}

function flags(args: Args): TrainFlags {
  const model = string_flag(args, 'model');
  const demo = model === undefined;
  const resume = args.resume;
  if (resume !== undefined && typeof resume !== 'string') throw new UsageError('--resume takes a checkpoint directory, or no value');
  const encoder_hidden_size = int_flag(args, 'encoder-hidden-size', 1);
  const prefix_projection = args['prefix-projection'] === true;
  if (encoder_hidden_size !== undefined && !prefix_projection) throw new UsageError('--encoder-hidden-size needs --prefix-projection');
  return {
    model: model ?? EMBEDDED_MODEL,
    data: string_flag(args, 'data') ?? EMBEDDED_DATA,
    output: string_flag(args, 'output') ?? `./${DEFAULT_OUTPUT_DIR}`,
    demo,
    num_virtual_tokens: int_flag(args, 'num-virtual-tokens', 1) ?? 10,
    prefix_projection,
    encoder_hidden_size,
    epochs: positive_flag(args, 'epochs') ?? (demo ? DEMO_EPOCHS : 1),
    max_steps: int_flag(args, 'max-steps', 1),
    batch_size: int_flag(args, 'batch-size', 1) ?? 1,
    grad_accum: int_flag(args, 'grad-accum', 1) ?? 8,
    lr: positive_flag(args, 'lr') ?? (demo ? DEMO_LEARNING_RATE : HF_LEARNING_RATE),
    logging_steps: steps_flag(args, 'logging-steps') ?? (demo ? DEMO_LOGGING_STEPS : 10),
    save_steps: steps_flag(args, 'save-steps') ?? 500,
    max_length: int_flag(args, 'max-length', 1) ?? 256,
    seed: int_flag(args, 'seed', 0) ?? 42,
    device: device_flag(args),
    dtype: string_flag(args, 'dtype') ?? 'auto',
    attn_implementation: (string_flag(args, 'attn-implementation') ?? 'eager') as AttnImplementation,
    resume: resume === undefined ? undefined : resume === '' ? true : resume,
    nproc: int_flag(args, 'nproc', 1) ?? 1,
    nnodes: int_flag(args, 'nnodes', 1) ?? 1,
    node_rank: int_flag(args, 'node-rank', 0) ?? 0,
    master_addr: string_flag(args, 'master-addr') ?? '127.0.0.1',
    master_port: int_flag(args, 'master-port', 1),
    ddp_timeout: positive_flag(args, 'ddp-timeout') ?? 1800,
  };
}

function env_world(): number {
  return distributed_env()?.world_size ?? 1;
}

/** The launcher's command line, handed to its workers. */
const LAUNCHER_ARGV_ENV = 'PEFT_NODE_LAUNCHER_ARGV';

const LAUNCHER_FLAGS = ['--nproc', '--nnodes', '--node-rank', '--master-addr', '--master-port'];

/** The command line for the workers: as typed, without the launcher's flags. */
function worker_argv(args: Args): string[] {
  const typed = Array.isArray(args[RAW_ARGV]) ? (args[RAW_ARGV] as string[]) : ['train'];
  const out: string[] = [];
  for (let i = 0; i < typed.length; i++) {
    const a = typed[i];
    if (LAUNCHER_FLAGS.some((f) => a.startsWith(`${f}=`))) continue;
    if (LAUNCHER_FLAGS.includes(a)) {
      if (typed[i + 1] !== undefined && !typed[i + 1].startsWith('-')) i++;
      continue;
    }
    out.push(a);
  }
  return out;
}

/** `train --nproc N`: this process only launches the workers (like torchrun) and reports how they ended. */
async function launch_workers(f: TrainFlags, args: Args): Promise<number> {
  if (f.node_rank >= f.nnodes) throw new UsageError(`--node-rank must be below --nnodes (${f.nnodes}), got ${f.node_rank}`);
  if (f.master_port !== undefined && f.master_port > 65535) throw new UsageError(`--master-port must be in [1, 65535], got ${f.master_port}`);
  const world = f.nproc * f.nnodes;
  const result = await launch({
    nproc_per_node: f.nproc,
    nnodes: f.nnodes,
    node_rank: f.node_rank,
    master_addr: f.master_addr,
    master_port: f.master_port ?? (f.nnodes > 1 ? 29500 : undefined),
    command: process.execPath,
    args: [path.join(PACKAGE_ROOT, 'bin', 'peft-node.js'), ...worker_argv(args)],
    log: note,
    // So that rank 0 can print how to resume: the command as typed, launcher flags included.
    env: { ...process.env, [LAUNCHER_ARGV_ENV]: JSON.stringify(args[RAW_ARGV] ?? ['train']) },
    on_start: (port) =>
      note(`launching ${f.nproc} worker${f.nproc === 1 ? '' : 's'} (ranks ${f.node_rank * f.nproc}-${(f.node_rank + 1) * f.nproc - 1} of ${world}; rendezvous at ${f.master_addr}:${port})`),
  });
  if (result.failures.length) {
    const first = result.failures[0];
    note(`training failed: worker rank ${first.rank} ${describe_exit(first)}`);
  }
  return result.exit_code;
}

/** Rows of --data: a file (data_files) or a directory (data_dir); its "train" split, or its only split. */
async function load_rows(data: string): Promise<Dataset<Row>> {
  if (!fs.existsSync(data)) throw new PeftNodeError('ERR_FILE_NOT_FOUND', `data not found: ${data}`);
  const splits = fs.statSync(data).isDirectory() ? await load_dataset('json', { data_dir: data }) : await load_dataset('json', { data_files: data });
  const names = Object.keys(splits);
  const ds = splits.train ?? (names.length === 1 ? splits[names[0]] : undefined);
  if (!ds) throw new PeftNodeError('ERR_INVALID_INPUT', `${data} has no "train" split (splits: ${names.join(', ') || 'none'})`);
  for (const col of ['instruction', 'output'])
    if (!ds.column_names.includes(col))
      throw new PeftNodeError(
        'ERR_INVALID_INPUT',
        `${data}: rows need "instruction" and "output" (and optionally "input") fields; found columns: ${ds.column_names.join(', ') || 'none'}`,
      );
  if (ds.num_rows === 0) throw new PeftNodeError('ERR_INVALID_INPUT', `${data} holds no rows`);
  return ds;
}

/** The seed notebook's process_func (MAX_LENGTH = max_length). */
export function make_process_func(tokenizer: PreTrainedTokenizer, max_length: number, source: string) {
  const eos = tokenizer.eos_token ?? '';
  const text = (example: Row, key: string, i: number, optional = false): string => {
    const v = example[key];
    if (typeof v === 'string') return v;
    if (optional && (v === null || v === undefined)) return '';
    throw new PeftNodeError('ERR_INVALID_INPUT', `${source}: row ${i}: "${key}" must be a string, got ${JSON.stringify(v)}`);
  };
  return (example: Row, i: number): Row => {
    const instruction = tokenizer(['Human: ' + text(example, 'instruction', i), text(example, 'input', i, true)].join('\n').trim() + '\n\nAssistant: ');
    const response = tokenizer(text(example, 'output', i) + eos);
    let input_ids = [...instruction.input_ids, ...response.input_ids];
    let attention_mask = [...instruction.attention_mask, ...response.attention_mask];
    let labels = [...new Array<number>(instruction.input_ids.length).fill(-100), ...response.input_ids];
    if (input_ids.length > max_length) {
      input_ids = input_ids.slice(0, max_length);
      attention_mask = attention_mask.slice(0, max_length);
      labels = labels.slice(0, max_length);
    }
    return { input_ids, attention_mask, labels };
  };
}

function shellQuote(s: string): string {
  return /^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}

/** The command line as typed, with `--resume [DIR]` replaced by `--resume` (the latest checkpoint in --output). */
function resume_command(args: Args): string[] {
  let typed = Array.isArray(args[RAW_ARGV]) ? (args[RAW_ARGV] as string[]) : ['train'];
  try {
    const launched = JSON.parse(process.env[LAUNCHER_ARGV_ENV] ?? 'null');
    if (Array.isArray(launched) && launched.every((a) => typeof a === 'string')) typed = launched;
  } catch {
    // not launched by `train --nproc`
  }
  const out: string[] = [];
  for (let i = 0; i < typed.length; i++) {
    const a = typed[i];
    if (a.startsWith('--resume=')) continue;
    if (a === '--resume') {
      if (typed[i + 1] !== undefined && !typed[i + 1].startsWith('-')) i++;
      continue;
    }
    out.push(a);
  }
  return [...out, '--resume'];
}

export async function handler(args: Args): Promise<number> {
  const f = flags(args);
  const env = distributed_env();
  if (!env && (f.nproc > 1 || f.nnodes > 1)) {
    check_inputs(f);
    return launch_workers(f, args);
  }
  // In a data-parallel worker only rank 0 talks (and writes the adapter); every rank trains.
  const main = (env?.rank ?? 0) === 0;
  const out = main ? say : () => undefined;
  check_inputs(f);
  return train(f, args, main, out);
}

/** What can be checked before loading anything (a launcher checks it once, before starting workers). */
function check_inputs(f: TrainFlags): void {
  require_model_dir(f.model);
  BloomConfig.from_pretrained(f.model); // a model peft-node cannot run fails now, not after tokenizing the data
  if (!fs.existsSync(f.data)) throw new PeftNodeError('ERR_FILE_NOT_FOUND', `data not found: ${f.data}`);
  if (typeof f.resume === 'string') require_dir(f.resume, 'checkpoint directory');
  if (f.resume === true && !latest_checkpoint(f.output))
    throw new PeftNodeError('ERR_FILE_NOT_FOUND', `no checkpoint to resume from in ${f.output} (pass --resume DIR, or the --output of the run to continue)`);
  if (fs.existsSync(f.output) && !fs.statSync(f.output).isDirectory())
    throw new PeftNodeError('ERR_IO', `--output is a file, not a directory: ${f.output}`);
}

async function train(f: TrainFlags, args: Args, main: boolean, out: (line?: string) => void): Promise<number> {
  out(`Model:  ${f.model}${f.demo ? ' (embedded tiny random BLOOM: its text is gibberish; pass --model DIR for a real one)' : ''}`);
  const ds = await load_rows(f.data);
  out(`Data:   ${f.data} (${ds.num_rows} rows)`);

  const tokenizer = await AutoTokenizer.from_pretrained(f.model);
  const tokenized = ds.map(make_process_func(tokenizer, f.max_length, f.data), { with_indices: true, remove_columns: ds.column_names });

  const model = await AutoModelForCausalLM.from_pretrained(f.model, { device: f.device, dtype: f.dtype, attn_implementation: f.attn_implementation });
  let peft_model: PeftModelForCausalLM | undefined;
  try {
    const config = new PrefixTuningConfig({
      task_type: TaskType.CAUSAL_LM,
      num_virtual_tokens: f.num_virtual_tokens,
      prefix_projection: f.prefix_projection,
      ...(f.encoder_hidden_size !== undefined ? { encoder_hidden_size: f.encoder_hidden_size } : {}),
    });
    set_seed(f.seed); // the prefix's initial values, as torch.manual_seed before get_peft_model
    peft_model = get_peft_model(model, config);
    if (main) peft_model.print_trainable_parameters();

    const args_ = new TrainingArguments({
      output_dir: f.output,
      per_device_train_batch_size: f.batch_size,
      gradient_accumulation_steps: f.grad_accum,
      learning_rate: f.lr,
      num_train_epochs: f.epochs,
      max_steps: f.max_steps ?? -1,
      logging_steps: f.logging_steps,
      save_steps: f.save_steps,
      seed: f.seed,
      ddp_timeout: f.ddp_timeout,
    });
    out(
      `Training: ${f.max_steps !== undefined ? `${f.max_steps} steps` : `${f.epochs} epoch${f.epochs === 1 ? '' : 's'}`}, ` +
        `batch ${f.batch_size} × ${f.grad_accum} accumulated${env_world() > 1 ? ` × ${env_world()} processes` : ''}, lr ${f.lr}, ${model.device} ${model.dtype}` +
        (f.demo && (args.epochs === undefined || args.lr === undefined) ? ' (demo defaults for the embedded model)' : '') +
        (f.resume ? `, resuming from ${f.resume === true ? `the latest checkpoint in ${f.output}` : f.resume}` : ''),
    );
    const trainer = new Trainer({
      model: peft_model,
      args: args_,
      train_dataset: tokenized,
      data_collator: new DataCollatorForSeq2Seq({ tokenizer, padding: true }),
      processing_class: tokenizer,
    });

    // The Trainer stops after the current step on Ctrl-C and saves a checkpoint; a second Ctrl-C quits at once.
    let interrupts = 0;
    const onSigint = () => {
      interrupts++;
      if (interrupts === 1) {
        if (main) note('stopping after the current step and saving a checkpoint (Ctrl-C again to quit now)');
        return;
      }
      // Quit now, without a checkpoint: the default SIGINT action (process.exit would wait for the running step).
      process.removeAllListeners('SIGINT');
      process.kill(process.pid, 'SIGINT');
    };
    process.on('SIGINT', onSigint);
    let result;
    try {
      result = await trainer.train({ resume_from_checkpoint: f.resume, handle_sigint: true });
    } finally {
      process.off('SIGINT', onSigint);
    }

    const step = result.global_step;
    if (!main) return result.interrupted ? 130 : 0; // rank 0 saves the checkpoint and the adapter
    if (result.interrupted) {
      const ckpt = path.join(f.output, `checkpoint-${step}`);
      out(`Interrupted at step ${step}: checkpoint saved in ${ckpt}`);
      out(`Continue with: peft-node ${resume_command(args).map(shellQuote).join(' ')}`);
      return 130;
    }

    const adapterDir = path.join(f.output, 'adapter');
    await peft_model.save_pretrained(adapterDir);
    await tokenizer.save_pretrained(adapterDir);
    const record = write_last_adapter({
      adapter: path.resolve(adapterDir),
      base_model: path.resolve(f.model),
      output_dir: path.resolve(f.output),
      global_step: step,
      training_loss: result.training_loss,
      created: new Date().toISOString(),
    });
    out(`Trained ${step} step${step === 1 ? '' : 's'}, train_loss ${result.training_loss.toFixed(4)}, in ${result.metrics.train_runtime}s`);
    out(`Adapter saved to ${adapterDir} (recorded as the last adapter in ${record})`);
    out(`Try it: peft-node generate --prompt ${shellQuote(f.demo ? '你好' : 'Hello')}`);
    return 0;
  } finally {
    await peft_model?.dispose();
    await model.dispose();
  }
}
