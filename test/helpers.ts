/** Shared test helpers: fixture paths, golden cases, and error metrics. */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { readSafetensors, writeSafetensors } from '../lib/utils/safetensors';
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

/** A random BLOOM big enough that a step or a decode takes a while. */
export function writeRandomBloom(dir: string, hidden: number, layers: number, heads: number, vocab: number, seed = 12345): string {
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ model_type: 'bloom', vocab_size: vocab, hidden_size: hidden, n_layer: layers, n_head: heads }));
  let s = seed;
  const rnd = () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32 - 0.5) * 0.1;
  const t = (...dims: number[]) => new Tensor('float32', Float32Array.from({ length: dims.reduce((a, b) => a * b) }, rnd), dims);
  const ones = (k: number) => new Tensor('float32', new Float32Array(k).fill(1), [k]);
  const tensors: [string, Tensor][] = [
    ['transformer.word_embeddings.weight', t(vocab, hidden)],
    ['transformer.word_embeddings_layernorm.weight', ones(hidden)],
    ['transformer.word_embeddings_layernorm.bias', t(hidden)],
    ['transformer.ln_f.weight', ones(hidden)],
    ['transformer.ln_f.bias', t(hidden)],
  ];
  for (let l = 0; l < layers; l++) {
    const p = `transformer.h.${l}.`;
    tensors.push(
      [p + 'input_layernorm.weight', ones(hidden)], [p + 'input_layernorm.bias', t(hidden)],
      [p + 'self_attention.query_key_value.weight', t(3 * hidden, hidden)], [p + 'self_attention.query_key_value.bias', t(3 * hidden)],
      [p + 'self_attention.dense.weight', t(hidden, hidden)], [p + 'self_attention.dense.bias', t(hidden)],
      [p + 'post_attention_layernorm.weight', ones(hidden)], [p + 'post_attention_layernorm.bias', t(hidden)],
      [p + 'mlp.dense_h_to_4h.weight', t(4 * hidden, hidden)], [p + 'mlp.dense_h_to_4h.bias', t(4 * hidden)],
      [p + 'mlp.dense_4h_to_h.weight', t(hidden, 4 * hidden)], [p + 'mlp.dense_4h_to_h.bias', t(hidden)],
    );
  }
  writeSafetensors(path.join(dir, 'model.safetensors'), tensors, { format: 'pt' });
  return dir;
}

/** DataCollatorForSeq2Seq's result for the fixture tokenizer, by hand: left padding with <pad> = 3, labels with -100. */
export function leftPadCollator(features: Record<string, unknown>[]) {
  const T = Math.max(...features.map((f) => (f.input_ids as number[]).length));
  const left = (a: number[], v: number) => [...Array(T - a.length).fill(v), ...a];
  return {
    input_ids: features.map((f) => left(f.input_ids as number[], 3)),
    attention_mask: features.map((f) => left(f.attention_mask as number[], 0)),
    labels: features.map((f) => left(f.labels as number[], -100)),
  };
}
