/** Shared test helpers: fixture paths, golden cases, and error metrics. */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { readSafetensors, writeSafetensors } from '../lib/utils/safetensors';
import { Tensor } from '../lib/tensor';
import { BloomForCausalLM, CausalLMInputs, CausalLMOutput, ForwardOptions, PrefixEncoder, PrefixTuningConfig, Trainer, TrainingArguments, get_peft_model, runtime_info, set_exact_mode, set_num_threads, set_seed } from '../lib';

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

/**
 * Records the worst errors seen, printed once at the end of a test file (the closing notes quote them) with the mode
 * the file ran in. With PEFT_NODE_TEST_ERROR_LOG=<file> the rows are also appended there as JSON lines (the
 * cross-CPU test reads them back from a child run).
 */
export class ErrorLog {
  private readonly rows: [string, number][] = [];
  constructor(private readonly fidelity?: Fidelity) {}
  add(what: string, err: number): number {
    this.rows.push([what, err]);
    return err;
  }
  print(title: string): void {
    const worst = this.rows.reduce((m, [, e]) => Math.max(m, e), 0);
    const mode = this.fidelity ? ` [one thread, exact mode: ${this.fidelity.label}]` : '';
    // eslint-disable-next-line no-console
    console.log(`${title}${mode}: worst relative error ${worst.toExponential(2)} over ${this.rows.length} comparisons\n` +
      this.rows.map(([w, e]) => `  ${w}: ${e.toExponential(2)}`).join('\n'));
    const file = process.env.PEFT_NODE_TEST_ERROR_LOG;
    if (file) {
      fs.appendFileSync(file, this.rows.map(([what, err]) => JSON.stringify({ title, bitExact: this.fidelity?.bitExact, what, err }) + '\n').join(''));
    }
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

/** The CPU a fixture set was computed on (scripts/fixture_cpu.py writes `<set>/made_on.json`). */
export interface MadeOn {
  vendor: string;
  family: number;
  model: number;
  model_name: string;
  isa: string[];
  capability: string;
  torch: string;
  threads: number;
  kernel_env: Record<string, string>;
}

/** Environment variables that make MKL, oneDNN or ATen pick other kernels on the same CPU (as scripts/fixture_cpu.py). */
export const KERNEL_ENV = ['ATEN_CPU_CAPABILITY', 'MKL_CBWR', 'MKL_ENABLE_INSTRUCTIONS', 'MKL_DEBUG_CPU_TYPE', 'ONEDNN_MAX_CPU_ISA',
  'DNNL_MAX_CPU_ISA', 'ONEDNN_DEFAULT_FPMATH_MODE'];

export interface Fidelity {
  /** True where this process picks the kernels the fixtures were made with: bit-identity is then asserted. */
  bitExact: boolean;
  madeOn: MadeOn;
  /** Why not (the first field that differs), or '' when bit-exact. */
  reason: string;
  /** For test titles: "bit-exact" or "tolerance mode (…why…)". */
  label: string;
}

/**
 * Whether a fixture set's bits can be expected here. PyTorch's float32 results are bit-reproducible only where the
 * same kernels run: MKL, oneDNN and ATen dispatch on the CPU's vendor, family / model and ISA and on ATen's capability
 * (ATEN_CPU_CAPABILITY caps it), and some environment variables redirect them. The brand string is not compared (a
 * virtual machine's cpuid and /proc/cpuinfo can disagree on it; family and model identify the microarchitecture).
 * Where anything differs, the tests that assert bit-identity compare with the cross-CPU tolerances (test/tolerances.ts).
 */
export function fixtureFidelity(setDir: string): Fidelity {
  const madeOn: MadeOn = JSON.parse(fs.readFileSync(path.join(setDir, 'made_on.json'), 'utf8'));
  const info = runtime_info();
  const cpu = info.cpu;
  const env = Object.fromEntries(KERNEL_ENV.filter((k) => process.env[k] !== undefined).map((k) => [k, process.env[k] as string]));
  const differs: [string, unknown, unknown][] = [
    ['torch', madeOn.torch, info.torchVersion.split('+')[0]],
    ['vendor', madeOn.vendor, cpu.vendor],
    ['family', madeOn.family, cpu.family],
    ['model', madeOn.model, cpu.model],
    ['ISA', madeOn.isa.join(' '), cpu.isa.join(' ')],
    ['ATen capability', madeOn.capability, cpu.capability],
    ['kernel environment', JSON.stringify(madeOn.kernel_env ?? {}), JSON.stringify(env)],
  ];
  const d = differs.find(([, a, b]) => a !== b);
  const reason = d ? `fixtures made with ${d[0]} ${JSON.stringify(d[1])}, this process has ${JSON.stringify(d[2])}` : '';
  return { bitExact: !d, madeOn, reason, label: d ? `tolerance mode (${reason})` : 'bit-exact' };
}

/**
 * Whether a seeded initial prefix can equal PEFT's bit for bit here. torch draws normal_ (the prefix embedding) with
 * its AVX2 kernel wherever ATen runs AVX2 or better (the AVX-512 build uses the same one) and with a scalar
 * Box-Muller otherwise, so only a CPU without AVX2 (ATen capability DEFAULT) gives other bits — as PEFT itself does
 * there (cpu_spread.json's aten_default variant includes that). The uniform_ of the Linear layers is exact anywhere.
 */
export function seededInitBitExact(f: Fidelity): boolean {
  return f.bitExact || (runtime_info().cpu.capability !== 'DEFAULT' && f.madeOn.capability !== 'DEFAULT');
}

/** A golden Trainer run of test/fixtures/trainer (scripts/gen_fixtures_trainer.py): what PEFT logged and ended with. */
export interface GoldenRun {
  name: string;
  settings: { prefix_projection: boolean; num_virtual_tokens: number; init_seed: number; dataset: string; training_args_passed: Record<string, unknown> };
  log_history: Record<string, number>[];
  train_output: { global_step: number; training_loss: number; metrics: Record<string, number> };
  trainable_param_names: string[];
}

export const TRAINER_FIXTURES = path.join(FIXTURES, 'trainer');
const TIMING = new Set(['train_runtime', 'train_samples_per_second', 'train_steps_per_second']);

/**
 * Re-runs golden Trainer run `name` on `model` as the generator ran it: torch.manual_seed(init_seed) right before
 * get_peft_model, the same TrainingArguments, the fixture tokenizer's left-padding collator. The caller disposes `pm`.
 */
export async function trainGoldenRun(model: BloomForCausalLM, name: string, outputDir: string) {
  const run: GoldenRun = JSON.parse(fs.readFileSync(path.join(TRAINER_FIXTURES, `${name}.json`), 'utf8'));
  const tensors = readSafetensors(path.join(TRAINER_FIXTURES, `${name}.safetensors`)).tensors;
  const raw = JSON.parse(fs.readFileSync(path.join(TRAINER_FIXTURES, run.settings.dataset), 'utf8'));
  const dataset: Record<string, unknown>[] = Array.isArray(raw) ? raw : raw.tokenized;
  set_seed(run.settings.init_seed);
  const pm = get_peft_model(model, new PrefixTuningConfig({ task_type: 'CAUSAL_LM', num_virtual_tokens: run.settings.num_virtual_tokens, prefix_projection: run.settings.prefix_projection }));
  const initial = new Map<string, Tensor>();
  for (const [n, p] of pm.named_parameters()) if (p.requires_grad) initial.set(n, await p.data());
  const { dataloader_num_workers: _w, ...passed } = run.settings.training_args_passed as Record<string, never>;
  const args = new TrainingArguments({ ...passed, output_dir: outputDir, disable_tqdm: true });
  const quiet = jest.spyOn(console, 'log').mockImplementation(() => undefined);
  const trainer = new Trainer({ model: pm, args, train_dataset: dataset, data_collator: leftPadCollator });
  let out;
  try {
    out = await trainer.train();
  } finally {
    quiet.mockRestore();
  }
  const final = new Map<string, Tensor>();
  for (const [n, p] of pm.named_parameters()) if (p.requires_grad) final.set(n, await p.data());
  return { run, tensors, pm, trainer, out, initial, final, fused: run.settings.training_args_passed.optim !== 'adamw_torch' };
}

/** The worst differences of a re-run from PEFT's: logged loss and train_loss (absolute), grad_norm and final parameters (relative). */
export function goldenRunErrors(r: Awaited<ReturnType<typeof trainGoldenRun>>): { loss: number; grad_norm: number; param: number } {
  let loss = Math.abs(r.out.training_loss - r.run.train_output.training_loss);
  let grad_norm = 0;
  r.trainer.state.log_history.forEach((e: Record<string, number>, i: number) => {
    const ref = r.run.log_history[i] ?? {};
    for (const [k, v] of Object.entries(ref)) {
      if (TIMING.has(k)) continue;
      if (k === 'loss' || k === 'train_loss') loss = Math.max(loss, Math.abs(e[k] - v));
      else if (k === 'grad_norm') grad_norm = Math.max(grad_norm, Math.abs(e[k] - v) / Math.abs(v));
    }
  });
  let param = 0;
  for (const [n, t] of r.final) param = Math.max(param, maxRelErr(asNumbers(t), asNumbers(r.tensors.get(`param_final.${n}`)!)));
  return { loss, grad_norm, param };
}

/** In the enclosing describe: one thread and exact mode (how the golden data was made), restored afterwards. */
export function useOneThreadExactMode(): void {
  const threads = runtime_info().numThreads;
  beforeAll(() => {
    set_num_threads(1);
    set_exact_mode(true);
  });
  afterAll(() => {
    set_num_threads(threads);
    set_exact_mode(false);
  });
}

/** A forward of `model` with `encoder`'s prefix as past_key_values (what a PEFT model does), the prompt then freed. */
export async function forwardWithEncoder(
  model: BloomForCausalLM,
  encoder: PrefixEncoder,
  inputs: CausalLMInputs,
  options: ForwardOptions = {},
): Promise<CausalLMOutput> {
  const rows = inputs.input_ids instanceof Tensor ? (inputs.input_ids.dims.length === 1 ? 1 : inputs.input_ids.dims[0]) : Array.isArray(inputs.input_ids[0]) ? inputs.input_ids.length : 1;
  const past = await encoder.get_prompt(rows, { requires_grad: options.backward ?? false });
  try {
    return await model.forward(inputs, { ...options, past_key_values: past });
  } finally {
    await past.dispose();
  }
}
