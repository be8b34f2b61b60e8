'use strict';
// The test load: a candidate binary is loaded in a child `node` (its libtorch preloaded as the parent would) before
// any process trusts it, because a bad binary can abort a process (a missing CUDA library, an illegal instruction, a
// static initialiser throwing). A passing verdict is cached per binary (path, size, mtime), libtorch and Node version
// in <cache>/addon-checks/, so it is paid once, not per require. Failures are not cached (a missing library may be
// installed in between). This file is also the child: `node test-load.js --peft-node-check <spec JSON>`.

const crypto = require('crypto');
const fs = require('fs');
const path = require('path');
const { spawnSync } = require('child_process');
const { defaultVerdictDir, readJson } = require('./facts.js');
const { preloadLibtorch, realpath } = require('./preload.js');

const CHECK_FLAG = '--peft-node-check';
const CHECK_PREFIX = 'PEFT_NODE_CHECK ';

function verdictKey(c) {
  let st;
  try {
    st = fs.statSync(c.file);
  } catch {
    return null;
  }
  const lt = c.preload;
  const parts = [realpath(c.file), st.size, st.mtimeMs, lt ? realpath(lt.root) : '', (lt && lt.fullVersion) ?? '', process.version, process.arch];
  return crypto.createHash('sha256').update(JSON.stringify(parts)).digest('hex').slice(0, 32);
}

/**
 * Loads the candidate in a child `node` and reports what it says (info()): { ok, reason?, info?, cached? }.
 * opts: env, verdictDir (undefined: <cache>/addon-checks; null: no cache), timeoutMs.
 */
function testLoad(c, opts = {}) {
  const env = opts.env || process.env;
  const dir = opts.verdictDir === undefined ? defaultVerdictDir(env) : opts.verdictDir;
  const key = verdictKey(c);
  if (!key) return { ok: false, reason: 'not found' };
  const verdictFile = dir ? path.join(dir, `${key}.json`) : null;
  if (verdictFile) {
    const v = readJson(verdictFile);
    if (v && v.ok && v.file === realpath(c.file)) return { ok: true, info: v.info, cached: true };
  }
  const spec = { file: c.file, preload: c.preload ? { root: c.preload.root, libDir: c.preload.libDir, cuda: c.preload.cuda } : null };
  const r = spawnSync(process.execPath, [__filename, CHECK_FLAG, JSON.stringify(spec)], {
    encoding: 'utf8',
    env,
    timeout: opts.timeoutMs ?? 120_000,
    maxBuffer: 16 << 20,
  });
  const line = (r.stdout || '').split('\n').find((l) => l.startsWith(CHECK_PREFIX));
  let res = null;
  try {
    res = line ? JSON.parse(line.slice(CHECK_PREFIX.length)) : null;
  } catch {
    res = null;
  }
  if (!res) {
    const how = r.error ? r.error.message : r.signal ? `killed by ${r.signal}` : `exit ${r.status}`;
    const tail = (r.stderr || '').trim().split('\n').slice(-3).join(' | ');
    return { ok: false, reason: `test load crashed (${how})${tail ? `: ${tail}` : ''}` };
  }
  if (!res.ok) return { ok: false, reason: `test load failed: ${res.error}` };
  const got = res.info && typeof res.info.torchVersion === 'string' ? res.info.torchVersion : null;
  if (c.expectVersion && got && got.split('+')[0] !== c.expectVersion) {
    return { ok: false, reason: `it runs libtorch ${got}, but was built for ${c.expectVersion}`, info: res.info };
  }
  if (verdictFile) {
    try {
      fs.mkdirSync(path.dirname(verdictFile), { recursive: true });
      const tmp = `${verdictFile}.${process.pid}.tmp`;
      fs.writeFileSync(tmp, `${JSON.stringify({ ok: true, file: realpath(c.file), info: res.info, date: new Date().toISOString() })}\n`);
      fs.renameSync(tmp, verdictFile);
    } catch {
      /* a read-only cache only costs a child process per load */
    }
  }
  return { ok: true, info: res.info };
}

function childMain(specJson) {
  const out = (r) => process.stdout.write(`${CHECK_PREFIX}${JSON.stringify(r)}\n`);
  try {
    const spec = JSON.parse(specJson);
    if (spec.preload) preloadLibtorch(spec.preload);
    const m = require(spec.file);
    const info = typeof m.info === 'function' ? m.info() : {};
    delete info.parallelInfo;
    out({ ok: true, info });
  } catch (err) {
    out({ ok: false, error: ((err && err.message) || String(err)).split('\n').slice(0, 4).join(' | ') });
  }
}

module.exports = { testLoad };

if (require.main === module && process.argv[2] === CHECK_FLAG) childMain(process.argv[3] ?? '{}');
