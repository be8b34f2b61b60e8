/** TrainerState: trainer_state.json in HF's schema, plus what exact resumption needs. */
import { PeftNodeError } from '../errors';
import { isPlainObject } from '../data/json';
import { pythonJsonDumps, readJsonObject } from '../utils/python_json';

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

  /**
   * Reads trainer_state.json (HF's or ours; Python's NaN/Infinity literals included). Values the Trainer uses are
   * validated: a corrupt file is ERR_JSON / ERR_CONFIG naming the file and the field, never a TypeError, a string
   * step counter ("1" + 1 = "11") or a negative step that would loop for ages.
   */
  static from_json_file(file: string): TrainerState {
    const raw = readJsonObject(file, { python_literals: true });
    const s = new TrainerState();
    const fields = s as unknown as Record<string, unknown>;
    for (const k of Object.keys(s)) {
      if (!(k in raw)) continue;
      const v = raw[k];
      const check = CHECKS[k];
      if (check && !check(v))
        throw new PeftNodeError('ERR_CONFIG', `${file}: '${k}' must be ${WANT[k]}, got ${String(JSON.stringify(v)).slice(0, 80)}`);
      fields[k] = v;
    }
    return s;
  }
}

const count = (v: unknown) => Number.isSafeInteger(v) && (v as number) >= 0;
const finite = (v: unknown) => typeof v === 'number' && Number.isFinite(v);
const nonNegative = (v: unknown) => finite(v) && (v as number) >= 0;
const CHECKS: Record<string, (v: unknown) => boolean> = {
  epoch: (v) => v === null || nonNegative(v),
  global_step: count,
  max_steps: finite,
  logging_steps: nonNegative,
  eval_steps: nonNegative,
  save_steps: nonNegative,
  train_batch_size: (v) => v === null || count(v),
  num_train_epochs: nonNegative,
  num_input_tokens_seen: nonNegative,
  total_flos: nonNegative,
  log_history: (v) => Array.isArray(v) && v.every((e) => isPlainObject(e) && Object.values(e).every((x) => typeof x === 'number' || x === null)),
  best_metric: (v) => v === null || typeof v === 'number',
  best_global_step: (v) => v === null || count(v),
  best_model_checkpoint: (v) => v === null || typeof v === 'string',
  is_local_process_zero: (v) => typeof v === 'boolean',
  is_world_process_zero: (v) => typeof v === 'boolean',
  is_hyper_param_search: (v) => typeof v === 'boolean',
  trial_name: (v) => v === null || typeof v === 'string',
  trial_params: (v) => v === null || isPlainObject(v),
  stateful_callbacks: isPlainObject,
};
const WANT: Record<string, string> = {
  epoch: 'null or a number >= 0', global_step: 'an integer >= 0', max_steps: 'a number', logging_steps: 'a number >= 0',
  eval_steps: 'a number >= 0', save_steps: 'a number >= 0', train_batch_size: 'null or an integer >= 0',
  num_train_epochs: 'a number >= 0', num_input_tokens_seen: 'a number >= 0', total_flos: 'a number >= 0',
  log_history: 'an array of objects of numbers', best_metric: 'null or a number', best_global_step: 'null or an integer >= 0',
  best_model_checkpoint: 'null or a string', is_local_process_zero: 'a boolean', is_world_process_zero: 'a boolean',
  is_hyper_param_search: 'a boolean', trial_name: 'null or a string', trial_params: 'null or an object', stateful_callbacks: 'an object',
};

// Values that are floats in Python even when integral (so 1 prints as 1.0, as HF's file has it).
const FLOAT_KEYS = new Set(['epoch', 'loss', 'grad_norm', 'learning_rate', 'total_flos', 'train_loss', 'train_runtime', 'train_samples_per_second', 'train_steps_per_second', 'eval_loss', 'eval_runtime', 'eval_samples_per_second', 'eval_steps_per_second']);
