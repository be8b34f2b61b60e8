#!/usr/bin/env node
'use strict';
// `npm install` hook: locate (or fetch) libtorch, then build the addon with cmake-js into build/Release/peft_node.node.
//   node scripts/install.js [--force]
//   --force                      clean rebuild (also done automatically when the libtorch in use changed)
//   PEFT_NODE_SKIP_INSTALL=1     do nothing (CI that only needs the TypeScript, or a prebuilt binary)
//   CMAKE_BUILD_PARALLEL_LEVEL   compile jobs (default: CPUs, capped by memory: a libtorch TU needs ~1.5 GB)
// Everything here is offline once libtorch is found: package.json "binary.napi_versions" makes cmake-js use the
// node-api-headers package instead of downloading Node headers.

const path = require('path');
const fs = require('fs');
const os = require('os');
const { spawn, spawnSync } = require('child_process');
const { locateLibtorch } = require('./libtorch.js');

const ROOT = path.resolve(__dirname, '..');
const OUT = path.join(ROOT, 'build');
const ADDON = path.join(OUT, 'Release', 'peft_node.node');
const STAMP = path.join(OUT, 'peft-node-build.json');

const log = (msg) => process.stderr.write(`peft-node: ${msg}\n`);
const secs = (t0) => `${((Date.now() - t0) / 1000).toFixed(1)} s`;

function readJson(file) {
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch {
    return null;
  }
}

// Newest mtime among the inputs of the build, so an unchanged tree re-installs in seconds.
function newestSourceMtime() {
  let newest = 0;
  const visit = (p) => {
    let st;
    try {
      st = fs.statSync(p);
    } catch {
      return;
    }
    if (st.isDirectory()) for (const name of fs.readdirSync(p)) visit(path.join(p, name));
    else if (/\.(c|cc|cpp|h|hpp|txt)$/.test(p)) newest = Math.max(newest, st.mtimeMs);
  };
  visit(path.join(ROOT, 'native', 'core'));
  visit(path.join(ROOT, 'native', 'binding'));
  visit(path.join(ROOT, 'CMakeLists.txt'));
  return newest;
}

function defaultJobs() {
  if (process.env.CMAKE_BUILD_PARALLEL_LEVEL) return Number(process.env.CMAKE_BUILD_PARALLEL_LEVEL) || 1;
  const cpus = typeof os.availableParallelism === 'function' ? os.availableParallelism() : os.cpus().length;
  const byMemory = Math.floor(os.totalmem() / (1.5 * 1024 ** 3));
  return Math.max(1, Math.min(cpus, byMemory));
}

function run(cmd, args, opts) {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'inherit', 'inherit'], ...opts });
    child.on('error', (e) => resolve({ code: null, error: e }));
    child.on('close', (code, signal) => resolve({ code, signal }));
  });
}

async function main(argv) {
  const force = argv.includes('--force');
  if (process.env.PEFT_NODE_SKIP_INSTALL === '1') {
    log('PEFT_NODE_SKIP_INSTALL=1: not locating libtorch, not building the native addon');
    return 0;
  }
  const t0 = Date.now();

  let lt;
  try {
    lt = await locateLibtorch({ log });
  } catch (e) {
    log(e.message);
    log('(set PEFT_NODE_SKIP_INSTALL=1 to install without the native addon)');
    return 1;
  }
  log(`libtorch ${lt.fullVersion || lt.version} (${lt.variant}) from ${lt.source}: ${lt.root} [${secs(t0)}]`);

  const config = { root: lt.root, version: lt.version, variant: lt.variant, torchDir: lt.torchDir };
  const stamp = readJson(STAMP);
  const sameLibtorch = stamp && JSON.stringify(stamp.libtorch) === JSON.stringify(config);
  let addonMtime = 0;
  try {
    addonMtime = fs.statSync(ADDON).mtimeMs;
  } catch {
    /* not built yet */
  }
  if (!force && sameLibtorch && addonMtime && newestSourceMtime() <= addonMtime) {
    log(`native addon up to date: ${path.relative(ROOT, ADDON)} (use --force to rebuild)`);
    return 0;
  }

  let cmakeJs;
  try {
    cmakeJs = require.resolve('cmake-js/bin/cmake-js', { paths: [ROOT] });
  } catch {
    log('cmake-js is not installed (it is a dependency of peft-node: run npm install without --omit=prod?)');
    return 1;
  }
  // `build` is incremental; a changed libtorch or --force needs `rebuild` (clean + configure) because cmake-js does
  // not re-run configure, so a new Torch_DIR would be ignored. Not `compile`: it retries every failure with a full
  // rebuild, which doubles the time of a genuine compile error (~35 s per libtorch translation unit).
  const command = force || !sameLibtorch ? 'rebuild' : 'build';
  const jobs = defaultJobs();
  const args = [cmakeJs, command, '--directory', ROOT, '--out', OUT, `--CDTorch_DIR=${lt.torchDir}`, '--parallel', String(jobs)];
  log(`building the native addon: cmake-js ${command}, ${jobs} job(s) (a few minutes: libtorch headers are heavy)`);
  const tb = Date.now();
  const r = await run(process.execPath, args, {
    cwd: ROOT,
    env: { ...process.env, CMAKE_BUILD_PARALLEL_LEVEL: String(jobs) },
  });
  if (r.code !== 0 || !fs.existsSync(ADDON)) {
    const why = r.error ? r.error.message : r.signal ? `killed by ${r.signal}` : r.code !== 0 ? `exit ${r.code}` : `no ${ADDON}`;
    log(`native build failed (cmake-js ${command}: ${why}) after ${secs(tb)}; see the compiler output above.`);
    log('Re-run with `npm run build:native`; PEFT_NODE_SKIP_INSTALL=1 installs without the addon.');
    return 1;
  }
  log(`built ${path.relative(ROOT, ADDON)} in ${secs(tb)}`);

  // Load it once in a child process: catches a wrong rpath / ABI mismatch here rather than at first use.
  const check = spawnSync(process.execPath, ['-e', `require(${JSON.stringify(ADDON)})`], { encoding: 'utf8', timeout: 120_000 });
  if (check.status !== 0) {
    log(`the built addon does not load: ${(check.stderr || check.error || '').toString().trim().split('\n').slice(0, 5).join(' | ')}`);
    return 1;
  }

  fs.writeFileSync(
    STAMP,
    `${JSON.stringify({ libtorch: config, fullVersion: lt.fullVersion, napiVersion: 8, builtWith: 'cmake-js', date: new Date().toISOString() }, null, 2)}\n`,
  );
  log(`done in ${secs(t0)}`);
  return 0;
}

main(process.argv.slice(2)).then(
  (code) => (process.exitCode = code),
  (e) => {
    log(e.stack || String(e));
    process.exitCode = 1;
  },
);
