/**
 * torch's global CPU generator, in program order. Parameter initialisation runs in the background, so seeding and
 * every draw from the global generator go through one queue: `set_seed(1); get_peft_model(a); set_seed(2)` gives
 * `a` the values Python gives it, however the thread pool schedules the work.
 */
import { PeftNodeError } from '../errors';
import { native } from './native';
import { SerialQueue } from './serial_queue';

const queue = new SerialQueue();

/** Seeds torch's default CPU generator (transformers' `set_seed` / `torch.manual_seed`); ordered with later inits. */
export function set_seed(seed: number): void {
  if (!Number.isSafeInteger(seed) || seed < 0)
    throw new PeftNodeError('ERR_INVALID_INPUT', `seed must be a non-negative integer, got ${seed}`);
  const addon = native(); // fail now, not later, when the addon cannot load
  void queue.run(async () => addon.manualSeed(seed));
}

/** Runs `task` (which draws from the global generator) after every earlier set_seed and draw. */
export function withGlobalGenerator<T>(task: () => Promise<T>): Promise<T> {
  return queue.run(task);
}
