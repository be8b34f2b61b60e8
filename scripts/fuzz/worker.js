#!/usr/bin/env node
'use strict';
/**
 * Fuzz worker, run by scripts/fuzz/run.js in a child process (so a crash or hang only costs this process):
 *
 *   worker.js --setup DIR                 write the templates (a tiny BLOOM, shards, adapter, checkpoint, dataset)
 *   worker.js --templates DIR --work DIR  serve: read cases from stdin, one JSON line each ({id, target, seed}),
 *                                         answer one JSON line per case on stdout, in order
 *   worker.js --templates DIR --dump OUT --target T --seed S   write one case's files to OUT (to inspect a failure)
 *
 * Answers: {id, status: 'ok' | 'named' | 'unnamed' | 'invariant', code?, name?, message?, ms}. A line is written
 * synchronously before the next case starts, so when the process dies the parent knows which case killed it.
 */
const fs = require('node:fs');
const path = require('node:path');
const readline = require('node:readline');

const ROOT = path.resolve(__dirname, '..', '..');
const P = require(path.join(ROOT, 'dist'));
const { isErrorCode } = require(path.join(ROOT, 'dist', 'errors'));
const M = require('./mutate');
const T = require('./targets');

function arg(name) {
  const i = process.argv.indexOf(name);
  return i < 0 ? undefined : process.argv[i + 1];
}

function send(obj) {
  fs.writeSync(1, JSON.stringify(obj) + '\n');
}

function classify(err) {
  if (err instanceof T.Invariant) return { status: 'invariant', message: err.message };
  const message = String(err && err.message !== undefined ? err.message : err).slice(0, 400);
  if (err instanceof P.PeftNodeError && isErrorCode(err.code)) return { status: 'named', code: err.code, message };
  return {
    status: 'unnamed',
    name: err && err.name,
    code: err && err.code,
    message,
    stack: err && typeof err.stack === 'string' ? err.stack.split('\n').slice(0, 8).join('\n') : undefined,
  };
}

async function serve(templatesDir, workDir) {
  P.set_num_threads(1);
  // The Trainer prints log dicts; stdout is our protocol channel.
  console.log = () => undefined;
  console.info = () => undefined;
  const templates = T.loadTemplates(templatesDir);
  const base = await P.AutoModelForCausalLM.from_pretrained(path.join(templatesDir, 'model'));
  const tokenizer = await P.AutoTokenizer.from_pretrained(path.join(templatesDir, 'model'));
  P.set_seed(0);
  const shared = {
    templatesDir,
    base,
    tokenizer,
    collator: new P.DataCollatorForSeq2Seq({ tokenizer, padding: true }),
    peft: P.get_peft_model(base, new P.PrefixTuningConfig({ task_type: 'CAUSAL_LM', num_virtual_tokens: 2 })),
  };
  await shared.peft.prompt_encoder();
  const myWork = path.join(workDir, `w${process.pid}`);
  fs.mkdirSync(myWork, { recursive: true });
  send({ ready: true, pid: process.pid });

  const queue = [];
  let wake = null;
  let closed = false;
  const rl = readline.createInterface({ input: process.stdin });
  rl.on('line', (line) => {
    if (!line.trim()) return;
    queue.push(JSON.parse(line));
    if (wake) wake();
  });
  rl.on('close', () => {
    closed = true;
    if (wake) wake();
  });
  for (;;) {
    if (queue.length === 0) {
      if (closed) break;
      await new Promise((resolve) => (wake = resolve));
      wake = null;
      continue;
    }
    const c = queue.shift();
    // Test hooks (test/fuzz.test.ts proves that the runner survives and names the culprit).
    if (String(c.id) === process.env.PEFT_NODE_FUZZ_ABORT_CASE) process.abort();
    if (String(c.id) === process.env.PEFT_NODE_FUZZ_HANG_CASE) for (;;);
    const dir = path.join(myWork, `c${c.id}`);
    const start = performance.now();
    let result;
    let ctx;
    try {
      ctx = T.builders[c.target](M.rng(c.seed), templates, dir);
    } catch (err) {
      // A bug in the fuzzer itself, not in peft-node: reported apart.
      result = { status: 'harness', message: String(err && err.stack).slice(0, 600) };
    }
    if (ctx)
      try {
        await T.exercisers[ctx.kind](P, ctx, shared);
        result = { status: 'ok' };
      } catch (err) {
        result = classify(err);
      }
    fs.rmSync(dir, { recursive: true, force: true });
    send({ id: c.id, ...result, ms: Math.round((performance.now() - start) * 100) / 100 });
  }
  fs.rmSync(myWork, { recursive: true, force: true });
  await shared.peft.dispose();
  await base.dispose();
}

async function main() {
  const setupDir = arg('--setup');
  if (setupDir) {
    await T.setup(P, setupDir, path.join(ROOT, 'assets', 'tiny-bloom'));
    send({ setup: true });
    return;
  }
  const templatesDir = arg('--templates');
  if (!templatesDir) throw new Error('worker.js needs --setup DIR or --templates DIR');
  const dump = arg('--dump');
  if (dump) {
    const r = M.rng(Number(arg('--seed')));
    T.builders[arg('--target')](r, T.loadTemplates(templatesDir), dump);
    send({ dumped: dump });
    return;
  }
  await serve(templatesDir, arg('--work'));
}

main().catch((err) => {
  process.stderr.write(`fuzz worker failed outside a case: ${err && err.stack}\n`);
  process.exit(70);
});
