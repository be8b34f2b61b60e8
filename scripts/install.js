#!/usr/bin/env node
'use strict';
// `npm install` hook: locate (or fetch) libtorch, then use the prebuilt binary when it fits, else build the addon
// with cmake-js into build/Release/peft_node.node.
//   node scripts/install.js [--force]
//   --force                      build from source, clean (also done automatically when the libtorch in use changed);
//                                failures are fatal (exit 1)
//   PEFT_NODE_SKIP_INSTALL=1     do nothing (CI that only needs the TypeScript)
//   PEFT_NODE_VARIANT=cu130      the variant to install (default cpu; PEFT_NODE_LIBTORCH_VARIANT is the older name)
//   PEFT_NODE_BUILD_FROM_SOURCE=1  never use the prebuilt
//   PEFT_NODE_INSTALL_STRICT=1   fail the install when no libtorch is found or the build fails (default: warn, exit 0)
//   CMAKE_BUILD_PARALLEL_LEVEL   compile jobs (default: CPUs, capped by memory: a libtorch TU needs ~1.5 GB)
//
// libtorch comes from scripts/libtorch/ (locate.js: the one search order, fetching when nothing is found). Prebuilt
// first: prebuilds/<platform>-<arch>-<variant>/ (see scripts/prebuild.js) is used when the libtorch found has the
// version and variant of its build-info.json, it was built from the native sources shipped with it, and it passes a
// test load in a child process (scripts/libtorch/prebuilt.js and test-load.js, the same checks the run-time loader
// makes; nothing here needs the compiled TypeScript). Then no compiler or cmake is needed.
// build/peft-node-install.json records the choice and the libtorch, which the loader uses at run time.
//
// An install never fails for want of libtorch or of a compiler (unless --force / PEFT_NODE_INSTALL_STRICT=1): the
// package stays importable, and its first use raises ERR_LIBTORCH_NOT_FOUND / ERR_ADDON_LOAD saying what to do.
// Everything here is offline once libtorch is found: package.json "binary.napi_versions" makes cmake-js use the
// node-api-headers package instead of downloading Node headers.

const path = require('path');
const fs = require('fs');
const os = require('os');
const { spawn, spawnSync } = require('child_process');
const { PINNED_VERSION, envVariant, locateLibtorch, prebuiltCandidate, prebuiltDir, readJson, testLoad } = require('./libtorch/index.js');

const ROOT = path.resolve(__dirname, '..');
const OUT = path.join(ROOT, 'build');
const ADDON = path.join(OUT, 'Release', 'peft_node.node');
const STAMP = path.join(OUT, 'peft-node-build.json');
const RECORD = path.join(OUT, 'peft-node-install.json');

const log = (msg) => process.stderr.write(`peft-node: ${msg}\n`);
const secs = (t0) => `${((Date.now() - t0) / 1000).toFixed(1)} s`;

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

function writeRecord(addon, lt, extra = {}) {
  try {
    fs.mkdirSync(OUT, { recursive: true });
    const libtorch = { root: lt.root, version: lt.version, fullVersion: lt.fullVersion, variant: lt.variant, source: lt.source };
    const rec = { addon, variant: lt.variant, libtorch, ...extra, date: new Date().toISOString() };
    fs.writeFileSync(RECORD, `${JSON.stringify(rec, null, 2)}\n`);
  } catch (e) {
    log(`warning: cannot write ${RECORD}: ${e.message}`);
  }
}

function readPrebuiltInfo(variant) {
  return readJson(path.join(prebuiltDir(ROOT, variant), 'build-info.json'));
}

/** The prebuilt for lt's variant if it fits and loads: { ok, file, reason }. */
function tryPrebuilt(variant, lt) {
  const runtimeLt = { root: lt.root, libDir: lt.libDir, version: lt.version, fullVersion: lt.fullVersion, variant: lt.variant, cuda: lt.cuda, source: lt.source };
  try {
    const { candidate, attempt } = prebuiltCandidate(variant, { root: ROOT, libtorch: runtimeLt });
    if (!candidate) return { ok: false, reason: attempt.reason };
    const t = testLoad(candidate);
    return t.ok ? { ok: true, file: candidate.file, cached: t.cached } : { ok: false, reason: t.reason };
  } catch (e) {
    return { ok: false, reason: `checking it failed: ${e.message}` };
  }
}

async function main(argv) {
  const force = argv.includes('--force');
  if (process.env.PEFT_NODE_SKIP_INSTALL === '1') {
    log('PEFT_NODE_SKIP_INSTALL=1: not locating libtorch, not building the native addon');
    return 0;
  }
  const strict = force || process.env.PEFT_NODE_INSTALL_STRICT === '1';
  const giveUp = (lines) => {
    for (const l of lines) log(l);
    if (strict) return 1;
    log('peft-node is installed WITHOUT its native addon: importing it works, its first use raises an error that says');
    log('what to do (the lines above). PEFT_NODE_INSTALL_STRICT=1 makes this a failed install instead.');
    return 0;
  };
  const t0 = Date.now();
  const variant = envVariant();
  const usePrebuilt = !force && process.env.PEFT_NODE_BUILD_FROM_SOURCE !== '1';
  // With a prebuilt for the variant, look for the libtorch version it was built against (the pin for cpu).
  const prebuiltInfo = usePrebuilt ? readPrebuiltInfo(variant) : null;
  const versions = [...new Set([prebuiltInfo && prebuiltInfo.libtorch && prebuiltInfo.libtorch.version, PINNED_VERSION].filter(Boolean))];

  let lt;
  let lastError;
  for (const version of versions) {
    try {
      lt = await locateLibtorch({ log, variant, version });
      break;
    } catch (e) {
      lastError = e;
      if (e.code !== 'ERR_LIBTORCH_NOT_FOUND') break; // an invalid explicit PEFT_NODE_LIBTORCH: say so
    }
  }
  if (!lt) {
    const lines = String(lastError && lastError.message).split('\n');
    return giveUp([
      ...lines,
      `Later: \`npx peft-node libtorch install${variant !== 'cpu' ? ` --variant ${variant}` : ''}${versions[0] !== PINNED_VERSION ? ` --torch-version ${versions[0]}` : ''}\` ` +
        'fetches it (a prebuilt binary then needs nothing else),',
      'or set PEFT_NODE_LIBTORCH and run `npm rebuild peft-node`.',
    ]);
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
    writeRecord('local', lt, { file: ADDON });
    return 0;
  }

  if (usePrebuilt && !prebuiltInfo) {
    log(`no prebuilt binary for ${process.platform}-${process.arch}-${variant} in this package: building from source`);
  } else if (usePrebuilt) {
    const tp = Date.now();
    const p = tryPrebuilt(variant, lt);
    if (p.ok) {
      log(`using the prebuilt ${path.relative(ROOT, p.file)} (test load ${p.cached ? 'cached' : `passed in ${secs(tp)}`}); no compiler needed`);
      writeRecord('prebuilt', lt, { file: p.file });
      log(`done in ${secs(t0)}`);
      return 0;
    }
    log(`prebuilt not used: ${p.reason}; building from source`);
  }

  let cmakeJs;
  try {
    cmakeJs = require.resolve('cmake-js/bin/cmake-js', { paths: [ROOT] });
  } catch {
    return giveUp(['cmake-js is not installed (it is a dependency of peft-node: run npm install without --omit=prod?)']);
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
    return giveUp([
      `native build failed (cmake-js ${command}: ${why}) after ${secs(tb)}; see the compiler output above.`,
      'It needs a C++20 compiler (g++ >= 12) and cmake >= 3.18. Re-run with `npm run build:native`.',
    ]);
  }
  log(`built ${path.relative(ROOT, ADDON)} in ${secs(tb)}`);

  // Load it once in a child process: catches a wrong rpath / ABI mismatch here rather than at first use.
  const check = spawnSync(process.execPath, ['-e', `require(${JSON.stringify(ADDON)})`], { encoding: 'utf8', timeout: 120_000 });
  if (check.status !== 0) {
    return giveUp([`the built addon does not load: ${(check.stderr || check.error || '').toString().trim().split('\n').slice(0, 5).join(' | ')}`]);
  }

  fs.writeFileSync(
    STAMP,
    `${JSON.stringify({ libtorch: config, fullVersion: lt.fullVersion, napiVersion: 8, builtWith: 'cmake-js', date: new Date().toISOString() }, null, 2)}\n`,
  );
  writeRecord('local', lt, { file: ADDON });
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
