/** TrainerState: trainer_state.json in HF's schema, plus what exact resumption needs. */
import * as fs from 'node:fs';
import { PeftNodeError } from '../errors';
import { pythonJsonDumps } from '../utils/python_json';

export type LogEntry = Record<string, number>;

export class TrainerState {
  epoch: number | null = null;
  global_step = 0;
  max_steps = 0;
  logging_steps = 500;
  eval_steps = 500;
  save_steps = 500;
  train_batch_size: number | null = null;
  num_train_epochs = 0;
  num_input_tokens_seen = 0;
  total_flos = 0;
  log_history: LogEntry[] = [];
  best_metric: number | null = null;
  best_global_step: number | null = null;
  best_model_checkpoint: string | null = null;
  is_local_process_zero = true;
  is_world_process_zero = true;
  is_hyper_param_search = false;
  trial_name: string | null = null;
  trial_params: Record<string, unknown> | null = null;
  stateful_callbacks: Record<string, unknown> = {
    TrainerControl: {
      args: { should_epoch_stop: false, should_evaluate: false, should_log: false, should_save: true, should_training_stop: false },
      attributes: {},
    },
  };

  /** HF writes `json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"`. */
  to_json_string(): string {
    const { ...fields } = this;
    return pythonJsonDumps(fields, { indent: 2, sort_keys: true, float_keys: FLOAT_KEYS }) + '\n';
  }

  static from_json_file(file: string): TrainerState {
    let raw: Record<string, unknown>;
    try {
      raw = JSON.parse(fs.readFileSync(file, 'utf8'));
    } catch (err) {
      throw new PeftNodeError('ERR_JSON', `cannot read ${file}: ${(err as Error).message}`);
    }
    const s = new TrainerState();
    for (const k of Object.keys(s) as (keyof TrainerState)[]) if (k in raw) (s as unknown as Record<string, unknown>)[k] = raw[k];
    return s;
  }
}

// Values that are floats in Python even when integral (so 1 prints as 1.0, as HF's file has it).
const FLOAT_KEYS = new Set(['epoch', 'loss', 'grad_norm', 'learning_rate', 'total_flos', 'train_loss', 'train_runtime', 'train_samples_per_second', 'train_steps_per_second', 'eval_loss', 'eval_runtime', 'eval_samples_per_second', 'eval_steps_per_second']);
