/**
 * The fuzzer in CI (scripts/fuzz; `npm run fuzz` runs 10,000 cases): a seeded subset of 2,000 mutated safetensors and
 * pytorch_model.bin files, configs, tokenizers, adapters, datasets and checkpoints, each loaded and used in a child
 * process, must load or fail
 * with a documented PeftNodeError code. Also: the same seed gives the same outcomes, and a worker that aborts or hangs
 * is reported with the case that did it while the remaining cases still run.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { tmpDir } from './helpers';

const RUN = path.resolve(__dirname, '..', 'scripts', 'fuzz', 'run.js');

interface Summary {
  cases: number;
  seconds: number;
  by_status: Record<string, number>;
  by_code: Record<string, number>;
  by_target: Record<string, Record<string, number>>;
  failures: { id: number; status: string; message: string; confirmed?: boolean }[];
}

function fuzz(args: string[], env: Record<string, string> = {}): { status: number | null; summary: Summary; stderr: string } {
  const r = spawnSync(process.execPath, [RUN, '--json', '--quiet', '--no-build', ...args], { encoding: 'utf8', timeout: 150000, env: { ...process.env, ...env } });
  const last = r.stdout.trim().split('\n').pop() ?? '';
  if (!last.startsWith('{')) throw new Error(`fuzz printed no summary (status ${r.status}):\n${r.stdout}\n${r.stderr}`);
  return { status: r.status, summary: JSON.parse(last), stderr: r.stderr };
}

test('2000 seeded cases: every one loads or fails with a documented code (no crash, hang or unnamed error)', () => {
  const { status, summary } = fuzz(['--seed', '2024', '--cases', '2000']);
  expect(summary.failures).toEqual([]);
  expect(status).toBe(0);
  expect(summary.cases).toBe(2000);
  // Every target was exercised, some cases loaded, and the validation paths were hit.
  for (const t of ['safetensors', 'config', 'generation_config', 'sharded', 'tokenizer', 'adapter', 'dataset', 'checkpoint', 'bin', 'api'])
    expect(Object.keys(summary.by_target)).toContain(t);
  expect(summary.by_status.ok).toBeGreaterThan(200);
  for (const code of ['ERR_SAFETENSORS_HEADER', 'ERR_SAFETENSORS_OFFSETS', 'ERR_SAFETENSORS_DTYPE', 'ERR_JSON', 'ERR_CONFIG', 'ERR_WEIGHT_MISSING', 'ERR_ZIP', 'ERR_PICKLE'])
    expect(summary.by_code[code]).toBeGreaterThan(0);
  // eslint-disable-next-line no-console
  console.log(`fuzz subset: ${summary.cases} cases in ${summary.seconds} s: ${JSON.stringify(summary.by_status)}`);
});

test('the same seed gives the same outcome for every case', () => {
  const dir = tmpDir();
  try {
    const outcomes = (file: string) =>
      fs.readFileSync(file, 'utf8').trim().split('\n').map((l) => {
        const { id, target, status, code, message } = JSON.parse(l);
        return { id, target, status, code, message: String(message ?? '').replace(/peft-node-fuzz-\w+/g, 'TMP').replace(/\/w\d+\/c/g, '/w/c') };
      });
    fuzz(['--seed', '77', '--cases', '150', '--jobs', '2', '--out', path.join(dir, 'a.jsonl')]);
    fuzz(['--seed', '77', '--cases', '150', '--jobs', '1', '--out', path.join(dir, 'b.jsonl')]);
    expect(outcomes(path.join(dir, 'b.jsonl'))).toEqual(outcomes(path.join(dir, 'a.jsonl')));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('a worker that aborts or hangs is reported with its case; the other cases still run in a new worker', () => {
  const { status, summary } = fuzz(['--seed', '5', '--cases', '60', '--jobs', '1', '--timeout-ms', '1500'], {
    PEFT_NODE_FUZZ_ABORT_CASE: '17',
    PEFT_NODE_FUZZ_HANG_CASE: '42',
  });
  expect(status).toBe(1);
  expect(summary.cases).toBe(60);
  expect(summary.failures.map((f) => [f.id, f.status, f.confirmed])).toEqual([
    [17, 'crash', true],
    [42, 'hang', true],
  ]);
  expect(summary.failures[0].message).toMatch(/signal SIGABRT/);
});
