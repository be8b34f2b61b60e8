/**
 * Trainer: HF transformers 5.17's training loop for a PEFT prefix-tuning model, step for step — the seeded sample
 * order, gradient accumulation with num_items_in_batch normalisation, clipping, torch's AdamW, LambdaLR, logging and
 * checkpoints — with the heavy work (forward, backward, optimizer step) native and off the main thread. Beyond HF:
 * checkpoints hold the full trainable state so `resume_from_checkpoint` continues bit-identically, and training can be
 * stopped (AbortSignal, Ctrl-C) after the current step with a checkpoint saved.
 */
import * as path from 'node:path';
import { default_process_group, distributed_env, init_process_group } from '../distributed/process_group';
import { PeftNodeError } from '../errors';
import { Parameter } from '../nn/parameter';
import { AdamW } from '../optim/adamw';
import { grad_norm_and_clip } from '../optim/clip_grad';
import { PeftModelForCausalLM } from '../peft/peft_model';
import { set_seed } from '../runtime/rng';
import { Tensor } from '../tensor';
import { randperm } from '../utils/torch_random';
import { PrinterCallback, ProgressCallback, TrainerCallback } from './callbacks';
import { load_checkpoint, save_checkpoint, rotate_checkpoints, latest_checkpoint, ResumeState, TrainingStateRefs } from './checkpoint';
import { DataParallel, Distribution, SingleProcess, dataloader_length, shard_batches } from './data_parallel';
import { learning_rate_at, uses_weight_decay } from './optimization';
import { TrainingArguments } from './training_args';
import { LogEntry, TrainerState } from './trainer_state';

/** A row source: a Dataset (`num_rows` + `at(i)`), or an array of rows. */
export type TrainDataset = { num_rows: number; at(i: number): Record<string, unknown> } | Record<string, unknown>[];

/** A batch the model takes: int tensors / arrays [B, T]. */
export type Batch = Record<string, unknown> & { input_ids: unknown; attention_mask?: unknown; labels?: unknown };

/** HF's data_collator: called with the list of rows of one micro-batch. */
export type DataCollator = ((features: Record<string, unknown>[]) => Batch) | { call(features: Record<string, unknown>[]): Batch };

export interface TrainerOptions {
  model: PeftModelForCausalLM;
  args?: TrainingArguments;
  train_dataset?: TrainDataset;
  eval_dataset?: TrainDataset;
  data_collator?: DataCollator;
  /** The tokenizer; saved into each checkpoint when it has save_pretrained. */
  processing_class?: { save_pretrained?(dir: string): unknown };
  /** Deprecated alias of processing_class, as in transformers. */
  tokenizer?: { save_pretrained?(dir: string): unknown };
  callbacks?: TrainerCallback[];
  /**
   * Stop with ERR_NONFINITE_LOSS after this many consecutive optimizer steps whose loss (any micro-batch) or gradient
   * norm is NaN/±inf (default 10; `null` never stops). Not an HF option: HF keeps going, filtering such losses from
   * the logs (`logging_nan_inf_filter`), and saves checkpoints of NaN weights. peft-node filters the logs the same way
   * and never writes a checkpoint whose prefix is not finite (it warns and skips that save), so the last checkpoint
   * on disk is the last good one to resume from.
   */
  max_consecutive_nonfinite_steps?: number | null;
}

export interface TrainOptions {
  /** A checkpoint directory, or true for the latest checkpoint in output_dir. */
  resume_from_checkpoint?: string | boolean;
  /** Stops after the current optimizer step, saves a checkpoint and resolves (TrainOutput.interrupted). */
  signal?: AbortSignal;
  /** Also stop like that on Ctrl-C (SIGINT) while training (default true). */
  handle_sigint?: boolean;
}

export interface TrainOutput {
  global_step: number;
  training_loss: number;
  metrics: LogEntry;
  /** True when stopped early by the signal or Ctrl-C (a checkpoint was saved). */
  interrupted: boolean;
}

// Columns of BloomForCausalLM.forward (HF's remove_unused_columns keeps only these, plus label names).
const MODEL_INPUTS = new Set(['input_ids', 'attention_mask', 'labels', 'label', 'label_ids']);

function datasetLength(ds: TrainDataset): number {
  return Array.isArray(ds) ? ds.length : ds.num_rows;
}
function datasetRow(ds: TrainDataset, i: number): Record<string, unknown> {
  return Array.isArray(ds) ? ds[i] : ds.at(i);
}

/** Rows → batch without padding (HF's default_data_collator needs equal lengths). */
function defaultCollator(features: Record<string, unknown>[]): Batch {
  const out: Record<string, unknown> = {};
  for (const key of Object.keys(features[0])) {
    const cols = features.map((f) => f[key] as number[]);
    const len = cols[0]?.length;
    if (cols.some((c) => !Array.isArray(c) || c.length !== len))
      throw new PeftNodeError('ERR_INVALID_INPUT', `rows of different lengths in '${key}': pass a data_collator that pads (DataCollatorForSeq2Seq)`);
    out[key] = cols;
  }
  return out as Batch;
}

/** The labels of a batch as nested arrays [B][T]. */
function labelRows(labels: unknown): number[][] {
  if (labels instanceof Tensor || (labels && typeof labels === 'object' && 'dims' in (labels as object) && 'data' in (labels as object))) {
    const t = labels as Tensor;
    const [B, T] = t.dims.length === 1 ? [1, t.dims[0]] : t.dims;
    const flat = Array.from(t.data as ArrayLike<number | bigint>, Number);
    return Array.from({ length: B }, (_, b) => flat.slice(b * T, (b + 1) * T));
  }
  const a = labels as number[][] | number[];
  return Array.isArray(a[0]) ? (a as number[][]) : [a as number[]];
}

function numelOf(x: unknown): number {
  if (x && typeof x === 'object' && 'dims' in (x as object)) return (x as Tensor).dims.reduce((a, b) => a * b, 1);
  return (x as number[][]).reduce((n, r) => n + (Array.isArray(r) ? r.length : 1), 0);
}

export class Trainer {
  readonly model: PeftModelForCausalLM;
  readonly args: TrainingArguments;
  readonly train_dataset?: TrainDataset;
  readonly eval_dataset?: TrainDataset;
  readonly data_collator: (features: Record<string, unknown>[]) => Batch;
  readonly processing_class?: { save_pretrained?(dir: string): unknown };
  readonly callbacks: TrainerCallback[];
  readonly max_consecutive_nonfinite_steps: number | null;
  state = new TrainerState();
  /** The optimizer of the last train() (HF's trainer.optimizer): torch's AdamW over the trainable parameters. */
  optimizer?: AdamW;

  constructor(options: TrainerOptions) {
    if (!(options.model instanceof PeftModelForCausalLM))
      throw new PeftNodeError('ERR_INVALID_INPUT', 'Trainer needs model: a PeftModelForCausalLM (from get_peft_model)');
    this.model = options.model;
    this.args = options.args ?? new TrainingArguments();
    if (!(this.args instanceof TrainingArguments)) throw new PeftNodeError('ERR_INVALID_INPUT', 'Trainer: args must be a TrainingArguments');
    this.train_dataset = options.train_dataset;
    this.eval_dataset = options.eval_dataset;
    const c = options.data_collator;
    this.data_collator = !c ? defaultCollator : typeof c === 'function' ? c : (f) => c.call(f);
    // HF saves the processing class with each checkpoint, falling back to the data collator's tokenizer.
    const collatorTokenizer = (c as { tokenizer?: { save_pretrained?(dir: string): unknown } } | undefined)?.tokenizer;
    this.processing_class = options.processing_class ?? options.tokenizer ?? collatorTokenizer;
    const reporting = this.args.disable_tqdm || !process.stderr.isTTY ? new PrinterCallback() : new ProgressCallback();
    this.callbacks = [reporting, ...(options.callbacks ?? [])];
    const limit = options.max_consecutive_nonfinite_steps === undefined ? 10 : options.max_consecutive_nonfinite_steps;
    if (limit !== null && !(Number.isSafeInteger(limit) && limit > 0))
      throw new PeftNodeError('ERR_INVALID_INPUT', `Trainer: max_consecutive_nonfinite_steps must be a positive integer or null, got ${limit}`);
    this.max_consecutive_nonfinite_steps = limit;
    set_seed(this.args.seed); // transformers' Trainer seeds in __init__
  }

  private async emit<K extends keyof TrainerCallback>(event: K, ...rest: unknown[]): Promise<void> {
    for (const cb of this.callbacks) {
      const fn = cb[event] as ((...a: unknown[]) => unknown) | undefined;
      if (fn) await fn.call(cb, this.args, this.state, ...rest);
    }
  }

  private prepareRow(row: Record<string, unknown>): Record<string, unknown> {
    if (typeof row !== 'object' || row === null || Array.isArray(row))
      throw new PeftNodeError('ERR_INVALID_INPUT', `training rows must be objects like { input_ids, attention_mask, labels }, got ${row === null ? 'null' : Array.isArray(row) ? 'an array' : typeof row}`);
    if (!this.args.remove_unused_columns) return row;
    const kept: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(row)) if (MODEL_INPUTS.has(k)) kept[k] = v;
    if (!('input_ids' in kept)) throw new PeftNodeError('ERR_INVALID_INPUT', `training rows need an 'input_ids' column (found: ${Object.keys(row).join(', ')})`);
    return kept;
  }

  private async runBatch(batch: Batch, num_items_in_batch: number | undefined, backward: boolean, loss_scale = 1) {
    return this.model.forward(
      {
        input_ids: batch.input_ids as never,
        attention_mask: batch.attention_mask as never,
        labels: batch.labels as never,
        num_items_in_batch,
      },
      { backward, return_logits: false, loss_scale },
    );
  }

  /**
   * How this process trains: one rank of the default process group — joined here from the launcher's environment
   * (WORLD_SIZE > 1) as HF's TrainingArguments does — or alone.
   */
  private async distribution(): Promise<Distribution> {
    const pg = default_process_group() ?? (distributed_env() ? await init_process_group({ backend: this.args.ddp_backend, timeout: this.args.ddp_timeout }) : undefined);
    return pg && pg.world_size > 1 ? new DataParallel(pg) : new SingleProcess();
  }

  /**
   * What HF's create_optimizer makes: torch's AdamW over the trainable parameters (the active adapter's), in two
   * groups — weight decay for all but biases and norms, none for those. Names are the adapter's own (checkpoints).
   */
  private trainingState(): TrainingStateRefs {
    const args = this.args;
    const prefix = `prompt_encoder.${this.model.active_adapter}.`;
    const parameters = this.model
      .named_parameters()
      .filter(([n, p]) => p.requires_grad && n.startsWith(prefix))
      .map(([n, p]) => [n.slice(prefix.length), p] as [string, Parameter]);
    const hyper = { lr: args.learning_rate, betas: [args.adam_beta1, args.adam_beta2] as [number, number], eps: args.adam_epsilon };
    const optimizer = new AdamW(
      [
        { params: parameters.filter(([n]) => uses_weight_decay(n)).map(([, p]) => p), weight_decay: args.weight_decay },
        { params: parameters.filter(([n]) => !uses_weight_decay(n)).map(([, p]) => p), weight_decay: 0.0 },
      ],
      hyper,
    );
    return { parameters, optimizer };
  }

  /** Runs training as HF's Trainer.train() does; resolves with { global_step, training_loss, metrics }. */
  async train(options: TrainOptions = {}): Promise<TrainOutput> {
    const args = this.args;
    const ds = this.train_dataset;
    if (!ds) throw new PeftNodeError('ERR_INVALID_INPUT', 'Trainer.train() needs a train_dataset');
    const isDataset = typeof ds === 'object' && !Array.isArray(ds) && typeof (ds as { at?: unknown }).at === 'function' && Number.isSafeInteger((ds as { num_rows?: unknown }).num_rows);
    if (!Array.isArray(ds) && !isDataset)
      throw new PeftNodeError('ERR_INVALID_INPUT', 'train_dataset must be a Dataset (num_rows + at(i)) or an array of rows');
    const N = datasetLength(ds);
    const bs = args.per_device_train_batch_size, GA = args.gradient_accumulation_steps;
    // Data parallelism (a launcher's WORLD_SIZE > 1): W ranks, each taking every W-th micro-batch of the seeded order.
    const dist = await this.distribution();
    const W = dist.world_size, rank = dist.rank;
    const lenDataloader = dataloader_length(N, bs, W, args.dataloader_drop_last);
    if (lenDataloader === 0) throw new PeftNodeError('ERR_INVALID_INPUT', `train_dataset has ${N} rows: not one batch of ${bs}${W > 1 ? ` for each of ${W} processes` : ''}`);
    const updatesPerEpoch = Math.max(Math.floor(lenDataloader / GA) + (lenDataloader % GA > 0 ? 1 : 0), 1);
    let maxSteps: number, numEpochs: number, numTrainSamples: number;
    if (args.max_steps > 0) {
      maxSteps = args.max_steps;
      numEpochs = Math.floor(maxSteps / updatesPerEpoch) + (maxSteps % updatesPerEpoch > 0 ? 1 : 0);
      numTrainSamples = maxSteps * bs * GA * W;
    } else {
      maxSteps = Math.ceil(args.num_train_epochs * updatesPerEpoch);
      numEpochs = Math.ceil(args.num_train_epochs);
      numTrainSamples = N * args.num_train_epochs;
    }
    const warmup = args.get_warmup_steps(maxSteps);
    const dataSeed = args.data_seed ?? args.seed;
    await this.model.prompt_encoder(); // the adapter exists (its creation's errors surface here)
    const training = this.trainingState();
    const params = training.parameters.map(([, p]) => p);
    const optimizer = (this.optimizer = training.optimizer);
    // HF's floating_point_ops: 6 · tokens · base parameters without the embeddings.
    const flopParams = this.model.base_model.num_parameters() - this.model.base_model.config.vocab_size * this.model.base_model.config.hidden_size;

    // --- state, possibly from a checkpoint
    const state = (this.state = new TrainerState());
    state.max_steps = maxSteps;
    state.num_train_epochs = numEpochs;
    state.train_batch_size = bs;
    state.is_world_process_zero = dist.is_main_process;
    state.is_local_process_zero = dist.local_rank === 0;
    const stepsOf = (v: number | null) => (v === null ? 0 : v < 1 ? Math.ceil(maxSteps * v) : v);
    state.logging_steps = stepsOf(args.logging_steps);
    state.eval_steps = args.eval_steps === null ? state.eval_steps : stepsOf(args.eval_steps); // HF keeps 500 when unset
    state.save_steps = stepsOf(args.save_steps);
    let resume: ResumeState = { tr_loss: 0, total_loss_scalar: 0, globalstep_last_logged: 0, current_flos: 0 };
    let resumeDir: string | undefined;
    if (options.resume_from_checkpoint) {
      resumeDir = options.resume_from_checkpoint === true ? latest_checkpoint(args.output_dir) : options.resume_from_checkpoint;
    }
    // Every rank must train the same thing (a rank that finds no checkpoint, on another machine's disk, shows here, so
    // that all ranks fail together); then, as DDP does at wrap time, all start from rank 0's parameters.
    const model = this.model.base_model.config;
    await dist.check_same_configuration({
      world_size: W,
      model: [model.n_layer, model.hidden_size, model.n_head, model.vocab_size],
      prefix: training.parameters.map(([n, p]) => [n, p.shape]),
      training_arguments: { ...args.to_dict(), output_dir: undefined },
      train_dataset_rows: N,
      resume_from_checkpoint: resumeDir !== undefined ? path.basename(resumeDir) : options.resume_from_checkpoint ? `none in ${args.output_dir}` : null,
    });
    if (options.resume_from_checkpoint && !resumeDir)
      throw new PeftNodeError('ERR_FILE_NOT_FOUND', `no checkpoint found in ${args.output_dir} to resume from`);
    if (resumeDir) {
      const loaded = await load_checkpoint(resumeDir, training, { rank, world_size: W });
      Object.assign(state, loaded.state, { max_steps: maxSteps, num_train_epochs: numEpochs, is_world_process_zero: dist.is_main_process, is_local_process_zero: state.is_local_process_zero });
      resume = loaded.resume;
    }
    // trainer_state.json records the world size where HF's TrainerState keeps extra state (so Python still loads it).
    const { DataParallel: _previous, ...callbacks } = state.stateful_callbacks;
    state.stateful_callbacks = W > 1 ? { ...callbacks, DataParallel: { args: { world_size: W }, attributes: {} } } : callbacks;
    await dist.broadcast_parameters(params);
    const epochsTrained = Math.floor(state.global_step / updatesPerEpoch);
    let updatesTrainedInEpoch = state.global_step % updatesPerEpoch;

    this.model.train();
    let trLoss = Math.fround(resume.tr_loss); // HF accumulates in a float32 tensor
    let totalLossScalar = resume.total_loss_scalar;
    let lastLogged = resume.globalstep_last_logged;
    let currentFlos = resume.current_flos;
    const start = performance.now();

    const controller = new AbortController();
    const onAbort = () => controller.abort();
    options.signal?.addEventListener('abort', onAbort);
    if (options.signal?.aborted) controller.abort();
    const sigint = options.handle_sigint ?? true;
    if (sigint) process.on('SIGINT', onAbort);

    // HF's store_flos: each rank's FLOPs since the last call, summed over the ranks.
    const storeFlos = async () => {
      state.total_flos += (await dist.sum([currentFlos]))[0];
      currentFlos = 0;
    };
    // The logged loss: the float32 mean over ranks of each rank's running sum (HF's nested_gather(tr_loss).mean()).
    const logWindow = async () => {
      const trLossScalar = await dist.mean_loss(trLoss);
      trLoss = Math.fround(trLoss - trLoss);
      const logs: LogEntry = { loss: trLossScalar / (state.global_step - lastLogged) };
      if (gradNorm !== undefined) logs.grad_norm = gradNorm;
      if (learningRate !== undefined) logs.learning_rate = learningRate;
      totalLossScalar += trLossScalar;
      lastLogged = state.global_step;
      await storeFlos();
      await this.log(logs);
    };
    const save = () =>
      this.saveCheckpoint(training, { tr_loss: trLoss, total_loss_scalar: totalLossScalar, globalstep_last_logged: lastLogged, current_flos: currentFlos }, dist);

    let interrupted = false;
    let gradNorm: number | undefined;
    let learningRate: number | undefined;
    let nonFiniteStreak = 0; // consecutive optimizer steps with a NaN/inf loss or gradient norm
    let stepNonFinite = false;
    await this.emit('on_train_begin');
    try {
      // A run resumed from its final checkpoint has nothing left to do (HF would train one step past max_steps).
      outer: for (let epoch = epochsTrained; epoch < numEpochs && state.global_step < maxSteps; epoch++) {
        const batches = shard_batches(randperm(N, dataSeed + epoch), bs, W, rank, args.dataloader_drop_last);
        const stepsInEpoch = lenDataloader;
        const remainder = stepsInEpoch % GA || GA;
        let step = updatesTrainedInEpoch * GA - 1;
        let cursor = updatesTrainedInEpoch * GA;
        for (let update = updatesTrainedInEpoch; update < updatesPerEpoch; update++) {
          const nBatches = update !== updatesPerEpoch - 1 ? GA : remainder;
          const group = batches.slice(cursor, cursor + nBatches).map((idx) => this.data_collator(idx.map((i) => this.prepareRow(datasetRow(ds, i)))));
          cursor += nBatches;
          // transformers 5.17 counts labels[..., 1:] for causal LMs (the first label is never predicted); under DDP
          // with average_tokens_across_devices the count is summed over the ranks and each loss scaled by W.
          let numItems = group.every((b) => b.labels !== undefined)
            ? group.reduce((n, b) => n + labelRows(b.labels).reduce((m, r) => m + r.slice(1).filter((v) => v !== -100).length, 0), 0)
            : undefined;
          const { num_items, loss_scale: lossScale } = await dist.num_items_in_batch(numItems, args.average_tokens_across_devices);
          numItems = num_items;
          for (const batch of group) {
            step++;
            const doSync = (step + 1) % GA === 0 || step + 1 === stepsInEpoch;
            const out = await this.runBatch(batch, numItems && numItems > 0 ? numItems : undefined, true, lossScale);
            const loss = out.loss ?? NaN;
            if (!Number.isFinite(loss)) stepNonFinite = true;
            if (args.logging_nan_inf_filter && !Number.isFinite(loss)) trLoss = Math.fround(trLoss + Math.fround(trLoss / (1 + state.global_step - lastLogged)));
            else trLoss = Math.fround(trLoss + loss);
            currentFlos += 6 * numelOf(batch.input_ids) * flopParams;
            if (!doSync) continue;
            // DDP's gradient sync; and one decision for all ranks on stopping (a signal reached some) and on whether
            // this step was non-finite anywhere, so that no rank stops or fails alone.
            const [stops, nonFinite] = await dist.sync_gradients(params, [controller.signal.aborted ? 1 : 0, stepNonFinite ? 1 : 0]);
            if (stops > 0) controller.abort();
            stepNonFinite = nonFinite > 0;
            // clip_grad_norm_, optimizer.step(), lr_scheduler.step(), optimizer.zero_grad() (transformers 1860-1881).
            learningRate = learning_rate_at(args.learning_rate, args.lr_scheduler_type, state.global_step, warmup, maxSteps);
            for (const g of optimizer.param_groups) g.lr = learningRate;
            gradNorm = await grad_norm_and_clip(params, args.max_grad_norm);
            await optimizer.step();
            await optimizer.zero_grad();
            state.global_step += 1;
            state.epoch = epoch + (step + 1) / stepsInEpoch;
            if (!Number.isFinite(gradNorm)) stepNonFinite = true;
            nonFiniteStreak = stepNonFinite ? nonFiniteStreak + 1 : 0;
            stepNonFinite = false;
            await this.emit('on_step_end');
            // DefaultFlowCallback's decisions.
            const gs = state.global_step;
            const shouldLog = (gs === 1 && args.logging_first_step) || (args.logging_strategy === 'steps' && gs % state.logging_steps === 0);
            const shouldEval = args.eval_strategy === 'steps' && (gs % state.eval_steps === 0 || gs >= maxSteps);
            let shouldSave = args.save_strategy === 'steps' && state.save_steps > 0 && gs % state.save_steps === 0;
            const stop = gs >= maxSteps;
            if (stop && args.save_strategy === 'steps') shouldSave = true;
            if (controller.signal.aborted) {
              interrupted = true;
              shouldSave = true;
            }
            if (shouldLog && gs > lastLogged) await logWindow();
            if (shouldEval && this.eval_dataset) await this.evaluate();
            const limit = this.max_consecutive_nonfinite_steps;
            if (limit !== null && nonFiniteStreak >= limit) throw await this.nonFiniteError(params, nonFiniteStreak);
            if (shouldSave) await save();
            if (stop || interrupted) break outer;
          }
        }
        updatesTrainedInEpoch = 0;
        if (args.logging_strategy === 'epoch' && state.global_step > lastLogged) await logWindow();
        if (args.eval_strategy === 'epoch' && this.eval_dataset) await this.evaluate();
        if (args.save_strategy === 'epoch') await save();
      }
    } finally {
      options.signal?.removeEventListener('abort', onAbort);
      if (sigint) process.off('SIGINT', onAbort);
    }

    // _finalize_training. The unlogged remainder is this rank's own (HF does not gather it), as in Python.
    totalLossScalar += trLoss;
    const trainLoss = totalLossScalar / Math.max(state.global_step, 0.001);
    const runtime = (performance.now() - start) / 1000;
    const metrics: LogEntry = { train_runtime: round(runtime, 4) };
    if (runtime > 0) {
      metrics.train_samples_per_second = round(numTrainSamples / runtime, 3);
      metrics.train_steps_per_second = round(maxSteps / runtime, 3);
    }
    await storeFlos();
    metrics.total_flos = state.total_flos;
    metrics.train_loss = trainLoss;
    await this.log(metrics);
    if (args.save_total_limit !== null && dist.is_main_process) rotate_checkpoints(args.output_dir, args.save_total_limit);
    await this.emit('on_train_end');
    return { global_step: state.global_step, training_loss: trainLoss, metrics: { ...metrics, epoch: state.epoch ?? 0 }, interrupted };
  }

  /** Appends to state.log_history (with epoch and step) and tells the callbacks, as HF's Trainer.log. */
  async log(logs: LogEntry): Promise<void> {
    if (this.state.epoch !== null) logs.epoch = this.state.epoch;
    this.state.log_history.push({ ...logs, step: this.state.global_step });
    await this.emit('on_log', logs);
  }

  /**
   * Mean loss over eval_dataset (HF's evaluation loop: each batch's mean token loss, weighted by batch size). Under
   * data parallelism rank r evaluates batches r, r+W, … and the sums are gathered: the same batches, and the same
   * result, as one process.
   */
  async evaluate(eval_dataset: TrainDataset | undefined = this.eval_dataset): Promise<LogEntry> {
    if (!eval_dataset) throw new PeftNodeError('ERR_INVALID_INPUT', 'Trainer.evaluate() needs an eval_dataset');
    const n = datasetLength(eval_dataset);
    const bs = this.args.per_device_eval_batch_size;
    const dist = await this.distribution();
    const W = dist.world_size;
    const start = performance.now();
    let sum = 0;
    let count = 0;
    for (let i = dist.rank * bs; i < n; i += bs * W) {
      const rows = [];
      for (let j = i; j < Math.min(n, i + bs); j++) rows.push(this.prepareRow(datasetRow(eval_dataset, j)));
      const batch = this.data_collator(rows);
      const out = await this.runBatch(batch, undefined, false);
      sum += (out.loss ?? NaN) * rows.length;
      count += rows.length;
    }
    [sum, count] = await dist.sum([sum, count]);
    const runtime = (performance.now() - start) / 1000;
    const metrics: LogEntry = {
      eval_loss: sum / count,
      eval_runtime: round(runtime, 4),
      eval_samples_per_second: round(count / runtime, 3),
      eval_steps_per_second: round(Math.ceil(n / (bs * W)) / runtime, 3),
    };
    await this.log(metrics);
    await this.emit('on_evaluate', metrics);
    return metrics;
  }

  /** Whether every trainable parameter is finite (a NaN gradient step poisons them all). */
  private async parametersFinite(params: Parameter[]): Promise<boolean> {
    for (const p of params) {
      const data = (await p.data()).data as Float32Array;
      for (let i = 0; i < data.length; i++) if (!Number.isFinite(data[i])) return false;
    }
    return true;
  }

  private async nonFiniteError(params: Parameter[], streak: number): Promise<PeftNodeError> {
    const gs = this.state.global_step;
    const last = latest_checkpoint(this.args.output_dir);
    const finite = await this.parametersFinite(params);
    return new PeftNodeError(
      'ERR_NONFINITE_LOSS',
      `training stopped at step ${gs}: the loss or the gradient norm was NaN/inf for ${streak} consecutive optimizer steps ` +
        `(steps ${gs - streak + 1}-${gs}); the prefix parameters are ${finite ? 'still finite' : 'no longer finite'}. ` +
        (last ? `The last good checkpoint is ${last}: resume from it with train({ resume_from_checkpoint: '${last}' }) ` : 'No checkpoint was saved yet; restart ') +
        'with a lower learning_rate, or check the data (rows whose labels are all -100 give a NaN loss, as in HF). ' +
        'Trainer option max_consecutive_nonfinite_steps sets the limit (null: never stop).',
    );
  }

  private async saveCheckpoint(training: TrainingStateRefs, resume: ResumeState, dist: Distribution): Promise<void> {
    // Under DDP each rank's loss window is its own: rank 0 records them all, so each rank resumes exactly.
    if (dist.world_size > 1) {
      const all = await dist.gather([resume.tr_loss, resume.current_flos]);
      resume = { ...resume, ranks: all.map(([tr_loss, current_flos]) => ({ tr_loss, current_flos })) };
    }
    const main = dist.is_main_process;
    if (!(await this.parametersFinite(training.parameters.map(([, p]) => p)))) {
      // HF would save NaN weights; a checkpoint you cannot resume from would only push a good one out (rotation).
      if (main)
        process.emitWarning(
          `not saving checkpoint-${this.state.global_step}: the prefix parameters are NaN/inf (the last good checkpoint is kept)`,
          'PeftNodeWarning',
        );
      return;
    }
    let dir = path.join(this.args.output_dir, `checkpoint-${this.state.global_step}`);
    if (main) {
      // Only the main process writes, as HF's should_save: the parameters and optimizer state are the same on all.
      dir = await save_checkpoint({
        output_dir: this.args.output_dir,
        model: this.model,
        training,
        state: this.state,
        args: this.args,
        resume,
        tokenizer: this.processing_class,
      });
      if (this.args.save_total_limit !== null) rotate_checkpoints(this.args.output_dir, this.args.save_total_limit);
    }
    await this.emit('on_save', dir);
  }
}

function round(x: number, digits: number): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

