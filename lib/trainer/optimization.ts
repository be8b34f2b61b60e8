/** transformers' LambdaLR schedules (optimization.py): lr(step) = base_lr · λ(step), λ in double precision. */
import { SchedulerType } from './training_args';

export function lr_lambda(type: SchedulerType, step: number, warmup: number, total: number): number {
  switch (type) {
    case 'constant':
      return 1;
    case 'constant_with_warmup':
      return step < warmup ? step / Math.max(1.0, warmup) : 1.0;
    case 'linear':
      if (step < warmup) return step / Math.max(1, warmup);
      return Math.max(0.0, (total - step) / Math.max(1, total - warmup));
    case 'cosine': {
      if (step < warmup) return step / Math.max(1, warmup);
      const progress = (step - warmup) / Math.max(1, total - warmup);
      return Math.max(0.0, 0.5 * (1.0 + Math.cos(Math.PI * 0.5 * 2.0 * progress)));
    }
  }
}

/** The learning rate torch's LambdaLR holds after `step` scheduler steps. */
export function learning_rate_at(base_lr: number, type: SchedulerType, step: number, warmup: number, total: number): number {
  return base_lr * lr_lambda(type, step, warmup, total);
}

/**
 * HF's get_decay_parameter_names: parameters of LayerNorm modules and names matching bias / layernorm / rmsnorm /
 * norm get no weight decay. A prefix encoder has no LayerNorm, so the name patterns decide.
 */
export function uses_weight_decay(name: string): boolean {
  return ![/bias/, /layernorm/, /rmsnorm/, /(?:^|\.)norm(?:$|\.)/, /_norm(?:$|\.)/].some((re) => re.test(name));
}
