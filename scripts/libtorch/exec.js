'use strict';
// Running python, pip and unzip: an async runner (so a lock heartbeat keeps ticking during a long pip download) and a
// synchronous one (run time: require() is synchronous). Both resolve { code, stdout, stderr, error } and never
// throw: callers turn failures into "why this way failed".

const childProcess = require('child_process');
const { errorWithCode } = require('./facts.js');

const timedOut = (ms) => errorWithCode(`timed out after ${ms} ms`, 'ETIMEDOUT');

function defaultExec(cmd, args, options = {}) {
  return new Promise((resolve) => {
    let child;
    try {
      child = childProcess.spawn(cmd, args, { cwd: options.cwd, env: options.env || process.env, stdio: ['ignore', 'pipe', 'pipe'] });
    } catch (error) {
      resolve({ code: null, stdout: '', stderr: '', error });
      return;
    }
    let stdout = '';
    let stderr = '';
    const cap = (s, d) => (s + d).slice(-(1 << 20)); // bounded, keeping the tail (where errors are)
    child.stdout.on('data', (d) => (stdout = cap(stdout, d.toString())));
    child.stderr.on('data', (d) => (stderr = cap(stderr, d.toString())));
    let killed = false;
    const timer = options.timeoutMs
      ? setTimeout(() => {
          killed = true;
          child.kill('SIGKILL');
        }, options.timeoutMs)
      : null;
    let spawnError = null;
    child.on('error', (e) => (spawnError = e));
    child.on('close', (code) => {
      if (timer) clearTimeout(timer);
      const error = spawnError || (killed ? timedOut(options.timeoutMs) : null);
      resolve({ code: error ? null : code, stdout, stderr, error });
    });
  });
}

function defaultExecSync(cmd, args, options = {}) {
  const r = childProcess.spawnSync(cmd, args, {
    cwd: options.cwd,
    env: options.env || process.env,
    encoding: 'utf8',
    timeout: options.timeoutMs,
    killSignal: 'SIGKILL',
    maxBuffer: 1 << 20,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const error = r.error ? (r.error.code === 'ETIMEDOUT' ? timedOut(options.timeoutMs) : r.error) : null;
  return { code: error ? null : r.status, stdout: r.stdout || '', stderr: r.stderr || '', error };
}

function execFailure(cmdline, r) {
  if (r.error && r.error.code === 'ENOENT') return `${cmdline}: not found`;
  if (r.error) return `${cmdline}: ${r.error.message}`;
  const lines = (r.stderr || r.stdout || '').trim().split('\n').filter(Boolean);
  const errors = lines.filter((l) => /error/i.test(l)); // pip: skip its retry warnings, keep the verdict
  const tail = (errors.length ? errors : lines).slice(-3).join(' | ');
  return `${cmdline}: exit ${r.code}${tail ? ` (${tail})` : ''}`;
}

module.exports = { defaultExec, defaultExecSync, execFailure };
