// What the benchmarks share (bench/run.js, bench/ddp.js): the cache, the Python of the PEFT side, and the random
// models both sides load.
'use strict';
const { execFileSync, spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const ROOT = path.resolve(__dirname, '..');
const CACHE = path.join(process.env.PEFT_NODE_CACHE || path.join(os.homedir(), '.cache', 'peft-node'), 'bench');
const common = JSON.parse(fs.readFileSync(path.join(__dirname, 'common.json'), 'utf8'));

/** The value after `name` on the command line, else `fallback`. */
function arg(name, fallback) {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : fallback;
}

/**
 * A Python with torch, transformers, peft and accelerate: PEFT_NODE_BENCH_PYTHON, else a venv built once from pip's
 * configured index/store (~/.cache/peft-node/bench-venv). null when neither works.
 */
function findPython(log) {
  const candidates = [process.env.PEFT_NODE_BENCH_PYTHON, path.join(CACHE, '..', 'bench-venv', 'bin', 'python')].filter(Boolean);
  const ok = (py) => spawnSync(py, ['-c', 'import torch, transformers, peft, accelerate; print(torch.__version__)'], { encoding: 'utf8' }).status === 0;
  for (const py of candidates) if (fs.existsSync(py) && ok(py)) return py;
  const venv = path.join(CACHE, '..', 'bench-venv');
  log(`building a Python venv for the PEFT side in ${venv} (pip's configured index/store; once)`);
  if (spawnSync('python3', ['-m', 'venv', venv], { stdio: 'inherit' }).status !== 0) return null;
  const req = fs.readFileSync(path.join(ROOT, 'scripts', 'requirements-fixtures.txt'), 'utf8').split('\n').filter((l) => /^(torch|transformers|peft|safetensors|accelerate)==/.test(l.trim()));
  const pip = spawnSync(path.join(venv, 'bin', 'pip'), ['install', '--retries', '0', '--timeout', '10', ...req], { stdio: 'inherit' });
  const py = path.join(venv, 'bin', 'python');
  return pip.status === 0 && ok(py) ? py : null;
}

/**
 * The model directory of config `name` and its shape: the fixture, or random weights written once by make_model.py
 * (null when they do not exist yet and there is no Python to write them).
 */
function benchModel(name, py, log) {
  const c = common.configs[name];
  if (!c) throw new Error(`unknown config ${name}`);
  if (c.fixture) {
    const dir = path.join(ROOT, c.fixture);
    const cfg = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8'));
    return { dir, shape: { ...c, hidden_size: cfg.hidden_size, n_layer: cfg.n_layer, n_head: cfg.n_head, vocab_size: cfg.vocab_size } };
  }
  const dir = path.join(CACHE, 'models', name);
  if (!fs.existsSync(path.join(dir, 'config.json'))) {
    if (!py) return null;
    log(`writing random weights for ${name} to ${dir}`);
    execFileSync(py, [path.join(__dirname, 'make_model.py'), dir, c.hidden_size, c.n_layer, c.n_head, c.vocab_size].map(String), { stdio: 'inherit' });
  }
  return { dir, shape: c };
}

module.exports = { ROOT, CACHE, common, arg, findPython, benchModel };
