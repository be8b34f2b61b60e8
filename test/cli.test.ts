/**
 * The `peft-node` CLI end to end: `node bin/peft-node.js ...` in a temporary working directory, with PEFT_NODE_CACHE
 * (where "the last adapter" is recorded) in a temporary directory too. jest's globalSetup has compiled dist/.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { human_assistant_prompt } from '../lib/cli/common';
import { make_process_func } from '../lib/cli/commands/train';
import { AutoTokenizer } from '../lib/tokenizer/auto';

const ROOT = path.resolve(__dirname, '..');
const BIN = path.join(ROOT, 'bin', 'peft-node.js');
const TINY = path.join(ROOT, 'assets', 'tiny-bloom');
const TRAINABLE_LINE = 'trainable params: 1,280 || all params: 58,816 || trainable%: 2.1763';
const STACK = /\n\s+at .+:\d+:\d+\)?/;

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

const tmpRoots: string[] = [];
function tmp(prefix: string): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), `peft-node-cli-${prefix}-`));
  tmpRoots.push(d);
  return d;
}
afterAll(() => {
  for (const d of tmpRoots) fs.rmSync(d, { recursive: true, force: true });
});

/** Runs the CLI in `cwd` with its own cache directory. */
function cli(args: string[], opts: { cwd: string; cache: string; input?: string; env?: NodeJS.ProcessEnv }): Run {
  const r = spawnSync(process.execPath, [BIN, ...args], {
    cwd: opts.cwd,
    env: { ...process.env, PEFT_NODE_CACHE: opts.cache, ...opts.env },
    input: opts.input ?? '',
    encoding: 'utf8',
    timeout: 60_000,
  });
  if (r.error) throw r.error;
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

function workspace(name: string): { cwd: string; cache: string } {
  const root = tmp(name);
  const cwd = path.join(root, 'work');
  fs.mkdirSync(cwd);
  return { cwd, cache: path.join(root, 'cache') };
}

describe('train with no flags (the embedded demo), then generate / chat / info on the adapter', () => {
  const ws = workspace('demo');
  let train: Run;
  const adapter = () => path.join(ws.cwd, 'peft-node-output', 'adapter');

  beforeAll(() => {
    train = cli(['train', '--max-steps', '4', '--logging-steps', '1'], ws);
  });

  test('trains, prints the trainable-params line and a log line per step, saves the adapter and records it', () => {
    expect(train.stderr).not.toMatch(STACK);
    expect(train.code).toBe(0);
    expect(train.stdout).toContain(TRAINABLE_LINE);
    // Not a TTY: the Trainer's plain log lines, one per step (logging_steps 1), then the final metrics.
    expect(train.stdout.match(/^\{'loss': '[\d.]+', 'grad_norm': .*'epoch': .*\}$/gm)).toHaveLength(4);
    expect(train.stdout).toMatch(/^\{'train_runtime': .*'train_loss': '[\d.]+'.*\}$/m);
    expect(train.stdout).toContain(`Adapter saved to ${path.join('peft-node-output', 'adapter')}`);
    for (const f of ['adapter_config.json', 'adapter_model.safetensors', 'tokenizer.json'])
      expect([f, fs.existsSync(path.join(adapter(), f))]).toEqual([f, true]);
    expect(fs.existsSync(path.join(ws.cwd, 'peft-node-output', 'checkpoint-4', 'trainer_state.json'))).toBe(true);
    const config = JSON.parse(fs.readFileSync(path.join(adapter(), 'adapter_config.json'), 'utf8'));
    expect(config).toMatchObject({ peft_type: 'PREFIX_TUNING', task_type: 'CAUSAL_LM', num_virtual_tokens: 10, prefix_projection: false });
    const last = JSON.parse(fs.readFileSync(path.join(ws.cache, 'last_adapter.json'), 'utf8'));
    expect(fs.realpathSync(last.adapter)).toBe(fs.realpathSync(adapter()));
    expect(fs.realpathSync(last.base_model)).toBe(fs.realpathSync(TINY));
    expect(last.global_step).toBe(4);
    expect(fs.readdirSync(ws.cache).filter((f) => f.includes('.tmp-'))).toEqual([]); // written atomically
  });

  test('generate uses the last adapter and streams text; sampling with a seed is reproducible', () => {
    const g = cli(['generate', '--prompt', '你好', '--max-new-tokens', '5'], ws);
    expect(g.stderr).not.toMatch(STACK);
    expect(g.code).toBe(0);
    expect(g.stderr).toMatch(/adapter .*peft-node-output\/adapter on .*tiny-bloom/);
    expect(g.stdout.replace(/\n$/, '').length).toBeGreaterThan(0);

    const sample = ['generate', '你好', '--max-new-tokens', '8', '--do-sample', '--seed', '7'];
    const a = cli(sample, ws);
    const b = cli(sample, ws);
    expect(a.code).toBe(0);
    expect(b.code).toBe(0);
    expect(a.stdout).toBe(b.stdout);
    expect(a.stdout.trim().length).toBeGreaterThan(0);
  });

  test('generate --no-adapter uses the base model alone; --template none passes the prompt as is', () => {
    const g = cli(['generate', '-p', 'Hello', '--max-new-tokens', '3', '--no-adapter', '--template', 'none'], ws);
    expect(g.code).toBe(0);
    expect(g.stderr).toContain('(no adapter)');
  });

  test('chat reads piped lines, streams one answer per line and stops at "exit"', () => {
    const c = cli(['chat', '--max-new-tokens', '4'], { ...ws, input: 'hello\nexit\nnever answered\n' });
    expect(c.stderr).not.toMatch(STACK);
    expect(c.code).toBe(0);
    const answers = c.stdout.split('\n').filter((l) => l.startsWith('Assistant: '));
    expect(answers).toHaveLength(1);
    expect(answers[0].length).toBeGreaterThan('Assistant: '.length);
    // End of input ends the chat too.
    const eof = cli(['chat', '--max-new-tokens', '2'], { ...ws, input: 'one\ntwo\n' });
    expect(eof.code).toBe(0);
    expect(eof.stdout.split('\n').filter((l) => l.startsWith('Assistant: '))).toHaveLength(2);
  });

  test('info on the adapter: its settings, the line it was trained with, and whether it fits a base model', () => {
    const text = cli(['info', adapter()], ws);
    expect(text.code).toBe(0);
    expect(text.stdout).toMatch(/peft_type\s+PREFIX_TUNING/);
    expect(text.stdout).toMatch(/num_virtual_tokens\s+10/);
    expect(text.stdout).toContain('prompt_embeddings F32 [10, 128]');

    const fits = cli(['info', adapter(), '--base', TINY], ws);
    expect(fits.code).toBe(0);
    expect(fits.stdout).toMatch(/fits --base\s+yes/);
    expect(fits.stdout).toContain(TRAINABLE_LINE);

    const json = JSON.parse(cli(['info', adapter(), '--base', TINY, '--json'], ws).stdout);
    expect(json).toMatchObject({
      kind: 'adapter',
      peft_type: 'PREFIX_TUNING',
      task_type: 'CAUSAL_LM',
      num_virtual_tokens: 10,
      prefix_projection: false,
      num_layers: 2,
      token_dim: 32,
      trainable_params: 1280,
      all_params: 58816,
      trainable_parameters_line: TRAINABLE_LINE,
      fit: { fits: true, problems: [], name_matches: true },
    });

    // A base model of another width does not fit: the reasons are named.
    const other = JSON.parse(cli(['info', adapter(), '--base', path.join(ROOT, 'test', 'fixtures', 'tiny-bloom-6h'), '--json'], ws).stdout);
    expect(other.fit.fits).toBe(false);
    expect(other.fit.problems.join('\n')).toMatch(/token_dim: adapter 32, base model 48/);
  });
});

test('train --data <a JSON Lines file> with the seed template, input optional', () => {
  const ws = workspace('jsonl');
  const rows = [
    { instruction: '把这句话翻译成英文：', input: '我喜欢喝茶。', output: 'I like drinking tea.' },
    { instruction: 'Say hi.', output: 'Hi!' },
    { instruction: 'Count to three.', input: null, output: '1, 2, 3' },
  ];
  fs.writeFileSync(path.join(ws.cwd, 'rows.jsonl'), rows.map((r) => JSON.stringify(r)).join('\n') + '\n');
  const r = cli(['train', '--data', 'rows.jsonl', '--output', 'out', '--max-steps', '2', '--grad-accum', '1', '--logging-steps', '1', '--prefix-projection'], ws);
  expect(r.stderr).not.toMatch(STACK);
  expect(r.code).toBe(0);
  expect(r.stdout).toContain('Data:   rows.jsonl (3 rows)');
  expect(r.stdout).toMatch(/^trainable params: [\d,]+ \|\| all params: [\d,]+ \|\| trainable%: [\d.]+$/m);
  expect(r.stdout.match(/^\{'loss': /gm)).toHaveLength(2);
  expect(fs.existsSync(path.join(ws.cwd, 'out', 'adapter', 'adapter_model.safetensors'))).toBe(true);
  const config = JSON.parse(fs.readFileSync(path.join(ws.cwd, 'out', 'adapter', 'adapter_config.json'), 'utf8'));
  expect(config.prefix_projection).toBe(true);
  const last = JSON.parse(fs.readFileSync(path.join(ws.cache, 'last_adapter.json'), 'utf8'));
  expect(fs.realpathSync(last.adapter)).toBe(fs.realpathSync(path.join(ws.cwd, 'out', 'adapter')));
});

test("process_func is the seed notebook's: Human/Assistant prompt, -100 on the prompt, eos appended, truncation", async () => {
  expect(human_assistant_prompt('你好')).toBe('Human: 你好\n\nAssistant: ');
  expect(human_assistant_prompt('Translate:', 'Good morning')).toBe('Human: Translate:\nGood morning\n\nAssistant: ');
  const tokenizer = await AutoTokenizer.from_pretrained(TINY);
  const f = make_process_func(tokenizer, 256, 'test');
  const row = f({ instruction: 'Say hi.', input: '', output: 'Hi!' }, 0);
  const prompt = tokenizer('Human: Say hi.\n\nAssistant: ').input_ids;
  const response = tokenizer('Hi!' + tokenizer.eos_token).input_ids;
  expect(row.input_ids).toEqual([...prompt, ...response]);
  expect(row.attention_mask).toEqual(new Array(prompt.length + response.length).fill(1));
  expect(row.labels).toEqual([...new Array(prompt.length).fill(-100), ...response]);
  const short = make_process_func(tokenizer, 5, 'test')({ instruction: 'Say hi.', input: null, output: 'Hi!' }, 0);
  expect(short).toEqual({ input_ids: prompt.slice(0, 5), attention_mask: [1, 1, 1, 1, 1], labels: [-100, -100, -100, -100, -100] });
  expect(() => f({ instruction: 'x', input: '', output: 3 }, 7)).toThrow(/row 7: "output" must be a string/);
});

test('info on a model directory: architecture, sizes and the parameter count from config.json; --json parses', () => {
  const ws = workspace('info');
  const text = cli(['info', TINY], ws);
  expect(text.code).toBe(0);
  expect(text.stdout).toMatch(/model_type\s+bloom/);
  expect(text.stdout).toMatch(/parameters\s+57,536/);
  expect(text.stdout).toContain('model.safetensors');
  const json = JSON.parse(cli(['info', TINY, '--json'], ws).stdout);
  expect(json).toMatchObject({
    kind: 'model',
    architectures: ['BloomForCausalLM'],
    model_type: 'bloom',
    vocab_size: 1000,
    hidden_size: 32,
    n_layer: 2,
    n_head: 4,
    parameters: 57536,
    dtype: 'float32',
  });
  expect(json.weight_files[0]).toMatchObject({ file: 'model.safetensors', parameters: 57536, dtypes: ['F32'] });
  expect(json.prefix_tuning.line).toBe(TRAINABLE_LINE);
});

test('doctor reports libtorch, the addon, CUDA, threads, data parallelism, Node and N-API, and exits 0', () => {
  const ws = workspace('doctor');
  const r = cli(['doctor'], ws);
  expect(r.stderr).not.toMatch(STACK);
  expect(r.code).toBe(0);
  expect(r.stdout).toMatch(/libtorch \d+\.\d+\.\d+/);
  expect(r.stdout).toMatch(/N-API \d+/);
  expect(r.stdout).toMatch(/cuda\s+(not available|available: \d+ device)/);
  expect(r.stdout).toMatch(/threads\s+\d+ intra-op threads/);
  expect(r.stdout).toMatch(/parallel\s+data-parallel training \(train --nproc N\): gloo/);
  const json = JSON.parse(cli(['doctor', '--json'], ws).stdout);
  expect(json.ok).toBe(true);
  expect(json.checks.map((c: { name: string }) => c.name)).toEqual(expect.arrayContaining(['libtorch', 'variant', 'binary', 'addon', 'torch', 'cuda', 'threads', 'node']));
  expect(r.stdout).toMatch(/binary\s+(local|prebuilt|env): /);
});

test('libtorch locate delegates to scripts/libtorch.js', () => {
  const buildInfo = path.join(ROOT, 'build', 'peft-node-build.json');
  const root = fs.existsSync(buildInfo) ? (JSON.parse(fs.readFileSync(buildInfo, 'utf8')).libtorch?.root as string | undefined) : undefined;
  const ws = workspace('libtorch');
  if (root && fs.existsSync(root)) {
    const r = cli(['libtorch', 'locate', '--no-fetch', '--print', 'version'], { ...ws, env: { PEFT_NODE_LIBTORCH: root } });
    expect(r.code).toBe(0);
    expect(r.stdout.trim()).toMatch(/^\d+\.\d+\.\d+$/);
  }
  // Nothing to find with an empty cache, no explicit dir and no fetching: exit 1 and the ways tried.
  const none = cli(['libtorch', 'locate', '--no-fetch'], { ...ws, env: { PEFT_NODE_LIBTORCH: '', LIBTORCH: '', PEFT_NODE_PYTHON: '/nonexistent/python' } });
  expect(none.code).toBe(1);
  expect(none.stderr).toContain('Tried, in order');
});

describe('mistakes: exit 2 for a bad command line, 1 for a missing path; one line, no stack trace', () => {
  const ws = workspace('errors');
  test.each([
    [['train', '--epochs', '-1'], 2, /--epochs must be > 0, got -1/],
    [['train', '--dtype', 'int3'], 2, /dtype.*int3/],
    [['train', '--no-such-flag'], 2, /unknown option --no-such-flag \(/],
    [['train', '--bogusFlag', '1', '-z'], 2, /unknown options --bogus-flag, -z \(/],
    [['info', 'a', 'b'], 2, /unexpected argument "b"/],
    [['train', '--batch-size', '1.5'], 2, /--batch-size must be an integer >= 1/],
    [['train', '--lr', 'fast'], 2, /--lr must be a number/],
    [['generate', '-p', 'x', '--top-p', '2'], 2, /--top-p must be in \(0, 1\]/],
    [['generate'], 2, /a prompt is needed/],
    [['frobnicate'], 2, /unknown command 'frobnicate'/],
    [['train', '--data', '/nonexistent/rows.json'], 1, /data not found: \/nonexistent\/rows\.json/],
    [['train', '--model', '/nonexistent/model'], 1, /\/nonexistent\/model/],
    [['generate', '--adapter', '/nonexistent', '-p', 'hi'], 1, /adapter directory not found: \/nonexistent/],
    [['info', '/nonexistent'], 1, /not found: \/nonexistent/],
  ])('%j → exit %i', (args, code, message) => {
    const r = cli(args as string[], ws);
    expect(r.code).toBe(code);
    expect(r.stderr).toMatch(message as RegExp);
    expect(r.stderr).toMatch(/^peft-node: /);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).not.toMatch(STACK);
    expect(r.stdout).toBe('');
  });

  test('--verbose adds the stack trace', () => {
    const r = cli(['train', '--data', '/nonexistent/rows.json', '--verbose'], ws);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(STACK);
  });
});

test.each(['train', 'generate', 'chat', 'info', 'convert', 'doctor', 'libtorch'])('peft-node %s --help shows usage with examples', (command) => {
  const ws = workspace('help');
  const r = cli([command, '--help'], ws);
  expect(r.code).toBe(0);
  expect(r.stdout).toContain(`peft-node ${command}`);
  expect(r.stdout).toContain('Examples:');
});
