'use strict';
// Step 5 of the search order (build time only): fetch libtorch into the cache, under a lock, through a temp dir next
// to the entry and an atomic rename; the marker is written last. Ways: the torch wheel through pip (only torch/lib,
// torch/include, torch/share and version.py are unpacked), the official libtorch zip (PEFT_NODE_LIBTORCH_URL for a
// mirror). CPU tries pip first; CUDA the zip first (it bundles the CUDA runtime the pip wheel leaves to nvidia-*).

const path = require('path');
const realFs = require('fs');
const { defaultLog, variantMatches } = require('./facts.js');
const { inspectLibtorch } = require('./inspect.js');
const { cacheKey, fromCache, writeMarker } = require('./cache.js');
const { execFailure } = require('./exec.js');
const { acquireLock } = require('./lock.js');
const { extractZip } = require('./unzip.js');

async function fetchIntoCache(ctx) {
  const fs = ctx.fs;
  const key = cacheKey(ctx);
  const finalDir = path.join(ctx.cacheRoot, key);
  const reasons = [];
  try {
    fs.mkdirSync(ctx.cacheRoot, { recursive: true });
  } catch (e) {
    return { result: null, reasons: [`fetch: cannot create ${ctx.cacheRoot}: ${e.message}`] };
  }
  let lock;
  try {
    lock = await acquireLock(ctx, path.join(ctx.cacheRoot, `${key}.lock`));
  } catch (e) {
    return { result: null, reasons: [`fetch: ${e.message}`] };
  }
  try {
    // Another process may have completed the cache while we waited for the lock.
    const again = fromCache(ctx);
    if (again.result) {
      ctx.log(`libtorch ${key} was fetched by another process meanwhile`);
      return { result: again.result, reasons };
    }
    if (fs.existsSync(finalDir)) {
      ctx.log(`removing incomplete cache ${finalDir} (${again.reason})`);
      fs.rmSync(finalDir, { recursive: true, force: true });
    }
    // Only lock holders create temp dirs for this key, so any left over belong to dead processes.
    for (const name of fs.readdirSync(ctx.cacheRoot)) {
      if (name.startsWith(`.tmp-${key}-`)) fs.rmSync(path.join(ctx.cacheRoot, name), { recursive: true, force: true });
    }

    const pipWay = { name: `pip wheel torch==${ctx.version}+${ctx.variant}`, run: (tmp) => fetchWithPip(ctx, tmp) };
    const zipUrl = libtorchZipUrl(ctx);
    const zipWay = { name: `libtorch zip ${zipUrl}`, run: (tmp) => fetchZip(ctx, tmp, zipUrl) };
    // CUDA torch wheels need the separate nvidia-* wheels at run time; the libtorch zip bundles them, so try it first.
    const ways = ctx.variant === 'cpu' ? [pipWay, zipWay] : [zipWay, pipWay];
    for (const way of ways) {
      // Temp dir next to the target: same filesystem, so the final rename is atomic.
      const tmp = fs.mkdtempSync(path.join(ctx.cacheRoot, `.tmp-${key}-`));
      const started = Date.now();
      try {
        ctx.log(`fetching libtorch ${key}: ${way.name}`);
        const { root, from, source } = await way.run(tmp);
        const info = inspectLibtorch(root, fs);
        if (!info.ok) throw new Error(info.problem);
        if (info.version !== ctx.version) throw new Error(`got libtorch ${info.fullVersion}, expected ${ctx.version}`);
        if (!variantMatches(ctx.variant, info.variant)) throw new Error(`got variant ${info.variant}, expected ${ctx.variant}`);
        // The marker is written last: its presence is what makes the cache complete.
        const marker = { version: ctx.version, variant: info.variant, fullVersion: info.fullVersion, source, from, date: new Date().toISOString() };
        writeMarker(fs, root, marker);
        try {
          fs.renameSync(root, finalDir);
        } catch (e) {
          // Only possible if the lock was (wrongly) broken and someone else finished first: use theirs.
          const theirs = fromCache(ctx);
          if (theirs.result) return { result: theirs.result, reasons };
          throw e;
        }
        const done = fromCache(ctx);
        if (!done.result) throw new Error(`cache check after fetch failed: ${done.reason}`);
        ctx.log(`libtorch ${key} fetched into ${finalDir} in ${((Date.now() - started) / 1000).toFixed(1)} s`);
        return { result: { ...done.result, source: 'fetched' }, reasons };
      } catch (e) {
        reasons.push(`fetch (${way.name}): ${e.message}`);
        ctx.log(`fetch failed (${way.name}): ${e.message}`);
      } finally {
        fs.rmSync(tmp, { recursive: true, force: true });
      }
    }
    return { result: null, reasons };
  } finally {
    lock.release();
  }
}

async function findPip(ctx) {
  const runners = [...ctx.pythons.map((py) => [py, '-m', 'pip']), ['pip3'], ['pip']];
  const tried = [];
  for (const runner of runners) {
    const r = await ctx.exec(runner[0], [...runner.slice(1), '--version'], { timeoutMs: 60_000, env: ctx.env });
    if (r.code === 0) return runner;
    tried.push(execFailure(runner.join(' '), r));
  }
  throw new Error(`no pip: ${tried.join('; ')}`);
}

async function fetchWithPip(ctx, tmp) {
  const pip = await findPip(ctx);
  const dl = path.join(tmp, 'download');
  ctx.fs.mkdirSync(dl);
  const spec = `torch==${ctx.version}+${ctx.variant}`;
  const indexUrl = ctx.env.PEFT_NODE_TORCH_INDEX_URL || `https://download.pytorch.org/whl/${ctx.variant}`;
  const common = ['download', spec, '--no-deps', '--only-binary=:all:', '-d', dl, '--disable-pip-version-check'];
  // First offline (pip's configured find-links / local wheel stores answer in seconds, and no retries against an
  // unreachable index), then the PyTorch index, with bounded retries.
  const attempts = [
    { label: '--no-index', args: ['--no-index'] },
    { label: `--extra-index-url ${indexUrl}`, args: ['--extra-index-url', indexUrl, '--retries', '1', '--timeout', '30'] },
  ];
  // PyPI's own torch wheel (no local tag: "torch==2.14.1") is a CUDA build (13.0 for 2.14); a local wheel store or
  // PyPI mirror may only have that one. Only for CUDA variants, and the variant is checked after extraction
  // (torch/version.py's `cuda`), so a wheel of another CUDA version is rejected, not used.
  if (/^cu\d+$/.test(ctx.variant)) {
    attempts.push({ label: '(no local version tag, pip\'s configured indexes)', spec: `torch==${ctx.version}`, args: ['--retries', '1', '--timeout', '30'] });
  }
  const failures = [];
  for (const attempt of attempts) {
    const wanted = attempt.spec || spec;
    const cmdline = `${pip.join(' ')} download ${wanted} ${attempt.label}`;
    ctx.log(`running ${cmdline}`);
    const args = [...common.map((a) => (a === spec ? wanted : a)), ...attempt.args];
    const r = await ctx.exec(pip[0], [...pip.slice(1), ...args], { timeoutMs: ctx.pipTimeoutMs, env: ctx.env });
    const wheel = (ctx.fs.existsSync(dl) ? ctx.fs.readdirSync(dl) : []).find((f) => /^torch-.*\.whl$/.test(f));
    if (r.code === 0 && wheel) {
      const x = path.join(tmp, 'x');
      await extractZip(ctx, path.join(dl, wheel), x, ['torch/lib/', 'torch/include/', 'torch/share/', 'torch/version.py']);
      ctx.fs.rmSync(dl, { recursive: true, force: true }); // free the disk early (a CUDA wheel is GBs)
      return { root: path.join(x, 'torch'), from: wheel, source: 'pip' };
    }
    failures.push(r.code === 0 ? `${cmdline}: no torch wheel downloaded` : execFailure(cmdline, r));
  }
  throw new Error(failures.join('; '));
}

function libtorchZipUrl(ctx) {
  if (ctx.env.PEFT_NODE_LIBTORCH_URL) return ctx.env.PEFT_NODE_LIBTORCH_URL;
  // cxx11 ABI: since 2.7 the only ABI PyTorch ships, and the one our build uses.
  return `https://download.pytorch.org/libtorch/${ctx.variant}/libtorch-shared-with-deps-${ctx.version}%2B${ctx.variant}.zip`;
}

async function fetchZip(ctx, tmp, url) {
  const zip = path.join(tmp, 'libtorch.zip');
  await ctx.download(url, zip, { log: ctx.log, fs: ctx.fs });
  const x = path.join(tmp, 'x');
  await extractZip(ctx, zip, x, ['libtorch/lib/', 'libtorch/include/', 'libtorch/share/', 'libtorch/build-version']);
  ctx.fs.rmSync(zip, { force: true });
  return { root: path.join(x, 'libtorch'), from: url, source: 'zip' };
}

/** Downloads url (http(s)://, file:// or a local path) to dest, following redirects, with progress on the log. */
async function downloadUrl(url, dest, { log = defaultLog, fs = realFs } = {}) {
  if (/^file:/.test(url) || !/^[a-z]+:\/\//i.test(url)) {
    const src = /^file:/.test(url) ? require('url').fileURLToPath(url) : path.resolve(url);
    fs.copyFileSync(src, dest);
    return;
  }
  const { pipeline } = require('stream/promises');
  let current = url;
  for (let hop = 0; hop < 10; hop++) {
    const res = await new Promise((resolve, reject) => {
      const mod = current.startsWith('https:') ? require('https') : require('http');
      const req = mod.get(current, { headers: { 'user-agent': 'peft-node' } }, resolve);
      req.on('error', reject);
      req.setTimeout(60_000, () => req.destroy(new Error(`no data for 60 s from ${current}`)));
    });
    if ([301, 302, 303, 307, 308].includes(res.statusCode) && res.headers.location) {
      res.resume();
      current = new URL(res.headers.location, current).href;
      continue;
    }
    if (res.statusCode !== 200) {
      res.resume();
      throw new Error(`HTTP ${res.statusCode} for ${current}`);
    }
    const total = Number(res.headers['content-length']) || 0;
    let got = 0;
    let lastLog = Date.now();
    res.on('data', (chunk) => {
      got += chunk.length;
      if (Date.now() - lastLog > 10_000) {
        lastLog = Date.now();
        log(`downloaded ${(got / 1e6).toFixed(0)}${total ? ` of ${(total / 1e6).toFixed(0)}` : ''} MB`);
      }
    });
    await pipeline(res, fs.createWriteStream(dest));
    if (total && got !== total) throw new Error(`download truncated: ${got} of ${total} bytes from ${current}`);
    return;
  }
  throw new Error(`too many redirects from ${url}`);
}


module.exports = { fetchIntoCache, libtorchZipUrl, downloadUrl };
