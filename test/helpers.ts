/** Shared test helpers: fixture paths, golden cases, and error metrics. */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { readSafetensors } from '../lib/utils/safetensors';
import { Tensor } from '../lib/tensor';

export const FIXTURES = path.join(__dirname, 'fixtures');
export const GOLDEN = path.join(FIXTURES, 'golden');
export const TINY = path.join(FIXTURES, 'tiny-bloom');

export interface GoldenCase {
  name: string;
  model: string;
  num_virtual_tokens: number;
  prefix_projection: boolean;
  encoder_hidden_size: number;
  num_items_in_batch: number | null;
  has_mask: boolean;
  has_labels: boolean;
  file: string;
  seed: number;
  trainable_param_names: string[];
  print_trainable_parameters: string;
  all_param_names: [string, boolean][];
  adapter_name: string;
  adapter_dir: string;
  init_weights: string | null;
  peft_config: Record<string, unknown>;
  loaded_print_trainable_parameters: string;
  loaded_all_param_names: [string, boolean][];
}

export function goldenCases(): GoldenCase[] {
  return JSON.parse(fs.readFileSync(path.join(GOLDEN, 'cases.json'), 'utf8'));
}

export function goldenTensors(c: GoldenCase): Map<string, Tensor> {
  return readSafetensors(path.join(GOLDEN, c.file)).tensors;
}

export function asNumbers(t: Tensor | ArrayLike<number>): Float64Array {
  const data = t instanceof Tensor ? (t.data as ArrayLike<number | bigint>) : t;
  return Float64Array.from(data as ArrayLike<number>, (v) => Number(v));
}

/**
 * Normwise relative error max|a-b| / max|b| (infinity norms) — element-wise ratios are meaningless for entries that
 * are ~0 in the reference. `mask(i)` restricts the comparison to the entries that count.
 */
export function maxRelErr(actual: ArrayLike<number>, expected: ArrayLike<number>, mask?: (i: number) => boolean): number {
  if (actual.length !== expected.length) throw new Error(`length ${actual.length} != ${expected.length}`);
  let scale = 0;
  let diff = 0;
  for (let i = 0; i < expected.length; i++) {
    if (mask && !mask(i)) continue;
    scale = Math.max(scale, Math.abs(expected[i]));
    const d = Math.abs(actual[i] - expected[i]);
    diff = Number.isNaN(d) ? Infinity : Math.max(diff, d);
  }
  return scale === 0 ? diff : diff / scale;
}

/** Number of entries whose bits differ (0 means bit-identical). */
export function countDiffering(actual: ArrayLike<number>, expected: ArrayLike<number>): number {
  let n = 0;
  for (let i = 0; i < expected.length; i++) if (!Object.is(actual[i], expected[i])) n++;
  return n;
}

export function tmpDir(prefix = 'peft-node-test-'): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

/** Records the worst errors seen, printed once at the end of a test file (the closing notes quote them). */
export class ErrorLog {
  private readonly rows: [string, number][] = [];
  add(what: string, err: number): number {
    this.rows.push([what, err]);
    return err;
  }
  print(title: string): void {
    const worst = this.rows.reduce((m, [, e]) => Math.max(m, e), 0);
    // eslint-disable-next-line no-console
    console.log(`${title}: worst relative error ${worst.toExponential(2)} over ${this.rows.length} comparisons\n` +
      this.rows.map(([w, e]) => `  ${w}: ${e.toExponential(2)}`).join('\n'));
  }
}
