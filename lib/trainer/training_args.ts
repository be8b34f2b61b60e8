/**
 * TrainingArguments: HF transformers 5.17's names and defaults for what peft-node's Trainer does. An unknown option
 * or an invalid value is an error naming it.
 */
import { distributed_env } from '../distributed/process_group';
import { PeftNodeError, repr } from '../errors';

export type IntervalStrategy = 'no' | 'steps' | 'epoch';
export type SchedulerType = 'linear' | 'cosine' | 'constant' | 'constant_with_warmup';
export type OptimizerName = 'adamw_torch' | 'adamw_torch_fused';

export interface TrainingArgumentsOptions {
  /** Where checkpoints (and the final adapter, if you save it there) go. Default "trainer_output". */
  output_dir: string;
  per_device_train_batch_size: number;
  per_device_eval_batch_size: number;
  gradient_accumulation_steps: number;
  learning_rate: number;
  weight_decay: number;
  adam_beta1: number;
  adam_beta2: number;
  adam_epsilon: number;
  /** Clip the gradient norm to this (0 disables clipping; the norm is still logged). */
  max_grad_norm: number;
  num_train_epochs: number;
  /** > 0 overrides num_train_epochs. */
  max_steps: number;
  lr_scheduler_type: SchedulerType;
  /** >= 1: steps; in [0, 1): a fraction of the total steps (transformers 5 folds warmup_ratio in here). */
  warmup_steps: number;
  /** transformers 4's name for a warmup fraction; kept for ported notebooks. */
  warmup_ratio: number;
  /** >= 1: every N updates; in (0, 1): a fraction of the total steps. */
  logging_steps: number;
  logging_first_step: boolean;
  logging_strategy: IntervalStrategy;
  logging_nan_inf_filter: boolean;
  save_strategy: IntervalStrategy;
  save_steps: number;
  /** Keep at most this many checkpoints (oldest deleted first); null keeps all. */
  save_total_limit: number | null;
  eval_strategy: IntervalStrategy;
  eval_steps: number | null;
  seed: number;
  /** Seed of the sample order (defaults to `seed`). */
  data_seed: number | null;
  dataloader_drop_last: boolean;
  /** No progress bar: plain log lines instead (also the behaviour when stderr, where the bar is drawn, is not a TTY). */
  disable_tqdm: boolean;
  /** Integrations to report to; peft-node has none, so only "none" / [] are accepted. */
  report_to: string | string[];
  optim: OptimizerName;
  bf16: boolean;
  fp16: boolean;
  use_cpu: boolean;
  remove_unused_columns: boolean;
  /** Data-parallel runs: normalise the loss by the token count of all ranks (HF's default), not each rank's own. */
  average_tokens_across_devices: boolean;
  /** Data-parallel backend: null or "gloo" (Gloo serves CPU and CUDA tensors; see README, Data-parallel training). */
  ddp_backend: string | null;
  /** Seconds the rendezvous and each collective may wait for the other ranks before ERR_DISTRIBUTED (HF: 1800). */
  ddp_timeout: number;
}

export const TRAINING_ARGS_DEFAULTS: TrainingArgumentsOptions = {
  output_dir: 'trainer_output',
  per_device_train_batch_size: 8,
  per_device_eval_batch_size: 8,
  gradient_accumulation_steps: 1,
  learning_rate: 5e-5,
  weight_decay: 0.0,
  adam_beta1: 0.9,
  adam_beta2: 0.999,
  adam_epsilon: 1e-8,
  max_grad_norm: 1.0,
  num_train_epochs: 3.0,
  max_steps: -1,
  lr_scheduler_type: 'linear',
  warmup_steps: 0,
  warmup_ratio: 0.0,
  logging_steps: 500,
  logging_first_step: false,
  logging_strategy: 'steps',
  logging_nan_inf_filter: true,
  save_strategy: 'steps',
  save_steps: 500,
  save_total_limit: null,
  eval_strategy: 'no',
  eval_steps: null,
  seed: 42,
  data_seed: null,
  dataloader_drop_last: false,
  disable_tqdm: false,
  report_to: 'none',
  optim: 'adamw_torch_fused',
  bf16: false,
  fp16: false,
  use_cpu: false,
  remove_unused_columns: true,
  average_tokens_across_devices: true,
  ddp_backend: null,
  ddp_timeout: 1800,
};

const NAMES = Object.keys(TRAINING_ARGS_DEFAULTS) as (keyof TrainingArgumentsOptions)[];

function bad(name: string, why: string, value: unknown): PeftNodeError {
  return new PeftNodeError('ERR_CONFIG', `TrainingArguments: ${name} ${why}, got ${repr(value)}`);
}

export interface TrainingArguments extends TrainingArgumentsOptions {}

export class TrainingArguments {
  constructor(options: Partial<TrainingArgumentsOptions> = {}) {
    for (const key of Object.keys(options))
      if (!(NAMES as string[]).includes(key))
        throw new PeftNodeError('ERR_CONFIG', `TrainingArguments: unknown option '${key}'; valid options: ${NAMES.join(', ')}`);
    Object.assign(this, TRAINING_ARGS_DEFAULTS, Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined)));
    const posInt = (k: keyof TrainingArgumentsOptions) => {
      const v = this[k];
      if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 1) throw bad(k, 'must be a positive integer', v);
    };
    const nonNeg = (k: keyof TrainingArgumentsOptions) => {
      const v = this[k];
      if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) throw bad(k, 'must be a finite number >= 0', v);
    };
    const bool = (k: keyof TrainingArgumentsOptions) => {
      if (typeof this[k] !== 'boolean') throw bad(k, 'must be a boolean', this[k]);
    };
    const oneOf = (k: keyof TrainingArgumentsOptions, allowed: readonly string[]) => {
      if (!allowed.includes(this[k] as string)) throw bad(k, `must be one of ${allowed.join(', ')}`, this[k]);
    };
    if (typeof this.output_dir !== 'string' || this.output_dir === '') throw bad('output_dir', 'must be a non-empty path', this.output_dir);
    for (const k of ['per_device_train_batch_size', 'per_device_eval_batch_size', 'gradient_accumulation_steps'] as const) posInt(k);
    for (const k of ['learning_rate', 'weight_decay', 'adam_epsilon', 'max_grad_norm', 'num_train_epochs', 'warmup_steps', 'warmup_ratio'] as const) nonNeg(k);
    for (const k of ['adam_beta1', 'adam_beta2'] as const)
      if (typeof this[k] !== 'number' || !(this[k] >= 0 && this[k] < 1)) throw bad(k, 'must be in [0, 1)', this[k]);
    if (!Number.isSafeInteger(this.max_steps) || (this.max_steps < 1 && this.max_steps !== -1))
      throw bad('max_steps', 'must be a positive integer or -1', this.max_steps);
    if (this.max_steps === -1 && this.num_train_epochs <= 0) throw bad('num_train_epochs', 'must be > 0 when max_steps is -1', this.num_train_epochs);
    if (this.warmup_ratio >= 1) throw bad('warmup_ratio', 'must be in [0, 1)', this.warmup_ratio);
    for (const k of ['logging_first_step', 'logging_nan_inf_filter', 'dataloader_drop_last', 'disable_tqdm', 'bf16', 'fp16', 'use_cpu', 'remove_unused_columns', 'average_tokens_across_devices'] as const) bool(k);
    oneOf('lr_scheduler_type', ['linear', 'cosine', 'constant', 'constant_with_warmup']);
    oneOf('optim', ['adamw_torch', 'adamw_torch_fused']);
    for (const k of ['logging_strategy', 'save_strategy', 'eval_strategy'] as const) oneOf(k, ['no', 'steps', 'epoch']);
    const steps = (k: 'logging_steps' | 'save_steps' | 'eval_steps') => {
      const v = this[k];
      if (v === null) return;
      if (typeof v !== 'number' || !(v > 0) || (v > 1 && !Number.isInteger(v)))
        throw bad(k, 'must be a positive integer, or a fraction in (0, 1) of the total steps', v);
    };
    steps('logging_steps');
    steps('save_steps');
    steps('eval_steps');
    if (this.eval_strategy === 'steps' && (this.eval_steps === null || this.eval_steps === 0)) this.eval_steps = this.logging_steps;
    if (this.save_total_limit !== null && (!Number.isSafeInteger(this.save_total_limit) || this.save_total_limit < 1))
      throw bad('save_total_limit', 'must be a positive integer or null', this.save_total_limit);
    for (const k of ['seed', 'data_seed'] as const) {
      const v = this[k];
      if (v !== null && (!Number.isSafeInteger(v) || v < 0)) throw bad(k, 'must be a non-negative integer', v);
    }
    const report = Array.isArray(this.report_to) ? this.report_to : [this.report_to];
    if (report.some((r) => r !== 'none'))
      throw bad('report_to', 'can only be "none" (peft-node has no reporting integrations; use callbacks)', this.report_to);
    if (this.ddp_backend !== null && this.ddp_backend !== 'gloo')
      throw bad('ddp_backend', 'must be null or "gloo" (this build has no NCCL process group; Gloo also serves CUDA models)', this.ddp_backend);
    if (typeof this.ddp_timeout !== 'number' || !Number.isFinite(this.ddp_timeout) || this.ddp_timeout <= 0)
      throw bad('ddp_timeout', 'must be a positive number of seconds', this.ddp_timeout);
    if (this.bf16 || this.fp16)
      throw bad(this.bf16 ? 'bf16' : 'fp16', 'mixed precision is not supported yet: load the model with dtype "bfloat16" instead', true);
  }

  /** HF's train_batch_size: the batch of one device (per_device_train_batch_size), also under data parallelism. */
  get train_batch_size(): number {
    return this.per_device_train_batch_size;
  }

  /** Processes training together: WORLD_SIZE from the launcher (peft-node train --nproc, torchrun), else 1. */
  get world_size(): number {
    return distributed_env()?.world_size ?? 1;
  }

  /** This process's rank (RANK), 0 without a launcher. */
  get process_index(): number {
    return distributed_env()?.rank ?? 0;
  }

  /** This process's rank on its machine (LOCAL_RANK), 0 without a launcher. */
  get local_process_index(): number {
    return distributed_env()?.local_rank ?? 0;
  }

  /** transformers' get_warmup_steps. */
  get_warmup_steps(num_training_steps: number): number {
    const w = this.warmup_steps > 0 ? this.warmup_steps : this.warmup_ratio;
    return w >= 1 ? Math.trunc(w) : Math.ceil(num_training_steps * w);
  }

  to_dict(): TrainingArgumentsOptions {
    return Object.fromEntries(NAMES.map((k) => [k, this[k]])) as unknown as TrainingArgumentsOptions;
  }
}
