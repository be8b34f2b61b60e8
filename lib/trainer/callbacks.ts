/**
 * Trainer callbacks (transformers' TrainerCallback, the events peft-node's Trainer emits), and the two that report
 * progress: a progress bar on a TTY (cli-progress) and plain log lines elsewhere.
 */
import * as cliProgress from 'cli-progress';
import type { TrainingArguments } from './training_args';
import type { LogEntry, TrainerState } from './trainer_state';

export interface TrainerCallback {
  on_train_begin?(args: TrainingArguments, state: TrainerState): void | Promise<void>;
  on_step_end?(args: TrainingArguments, state: TrainerState): void | Promise<void>;
  on_log?(args: TrainingArguments, state: TrainerState, logs: LogEntry): void | Promise<void>;
  on_save?(args: TrainingArguments, state: TrainerState, checkpoint: string): void | Promise<void>;
  on_evaluate?(args: TrainingArguments, state: TrainerState, metrics: LogEntry): void | Promise<void>;
  on_train_end?(args: TrainingArguments, state: TrainerState): void | Promise<void>;
}

/** Python's `f"{v:.4g}"`. */
export function format4g(v: number): string {
  if (!Number.isFinite(v)) return Number.isNaN(v) ? 'nan' : v > 0 ? 'inf' : '-inf';
  if (v === 0) return '0';
  const exp = Math.floor(Math.log10(Math.abs(Number(v.toPrecision(4)))));
  if (exp < -4 || exp >= 4) {
    const [m, e] = v.toExponential(3).split('e');
    const mant = m.includes('.') ? m.replace(/\.?0+$/, '') : m;
    const n = Number(e);
    return `${mant}e${n < 0 ? '-' : '+'}${String(Math.abs(n)).padStart(2, '0')}`;
  }
  const s = v.toPrecision(4);
  return s.includes('.') ? s.replace(/\.?0+$/, '') : s;
}

/** The dict HF prints for a log entry: `{'loss': '2.345', 'grad_norm': '0.5', ...}` (floats as .4g, total_flos dropped). */
export function format_log_line(logs: LogEntry): string {
  const parts = Object.entries(logs)
    .filter(([k]) => k !== 'total_flos')
    .map(([k, v]) => `'${k}': ${Number.isInteger(v) && !FLOAT_LOG_KEYS.has(k) ? String(v) : `'${format4g(v)}'`}`);
  return `{${parts.join(', ')}}`;
}
const FLOAT_LOG_KEYS = new Set(['loss', 'grad_norm', 'learning_rate', 'epoch', 'train_loss', 'train_runtime', 'train_samples_per_second', 'train_steps_per_second', 'eval_loss', 'eval_runtime', 'eval_samples_per_second', 'eval_steps_per_second']);

/** Prints each log entry as a line (HF's PrinterCallback): used when stdout is not a TTY or with disable_tqdm. */
export class PrinterCallback implements TrainerCallback {
  constructor(private readonly write: (line: string) => void = (l) => console.log(l)) {}
  on_log(_a: TrainingArguments, state: TrainerState, logs: LogEntry): void {
    if (state.is_local_process_zero) this.write(format_log_line(logs));
  }
}

/** A progress bar on a TTY: step / max_steps, it/s, ETA and the last logged loss; log lines print above it. */
export class ProgressCallback implements TrainerCallback {
  private bar: cliProgress.SingleBar | undefined;
  private started = 0;
  private lastLoss = '';

  constructor(private readonly stream: NodeJS.WriteStream = process.stderr) {}

  // As HF's: only the main process of a data-parallel run draws.
  on_train_begin(_a: TrainingArguments, state: TrainerState): void {
    if (!state.is_world_process_zero) return;
    this.bar = new cliProgress.SingleBar(
      {
        stream: this.stream,
        format: '{bar} {value}/{total} [{duration_formatted}<{eta_formatted}, {rate} it/s{loss}]',
        hideCursor: true,
        clearOnComplete: false,
        etaBuffer: 20,
      },
      cliProgress.Presets.shades_classic,
    );
    this.started = Date.now();
    this.bar.start(state.max_steps, state.global_step, { rate: '0.00', loss: '' });
  }

  on_step_end(_a: TrainingArguments, state: TrainerState): void {
    const secs = (Date.now() - this.started) / 1000;
    this.bar?.update(state.global_step, { rate: secs > 0 ? (state.global_step / secs).toFixed(2) : '0.00', loss: this.lastLoss });
  }

  on_log(_a: TrainingArguments, state: TrainerState, logs: LogEntry): void {
    if (!state.is_world_process_zero) return;
    if (typeof logs.loss === 'number') this.lastLoss = `, loss ${format4g(logs.loss)}`;
    // Print above the bar, as tqdm.write does.
    this.stream.write('\r\x1b[2K' + format_log_line(logs) + '\n');
    this.bar?.render();
  }

  on_train_end(): void {
    this.bar?.stop();
    this.bar = undefined;
  }
}
