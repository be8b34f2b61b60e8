// The package as a user gets it: `npm pack`, then `npm install <tarball>` into a fresh project whose PATH holds only
// node and npm (no compiler, no cmake, no python), with a private, empty npm cache (the dependencies come from the
// registry, as on a machine that never installed anything: nothing an earlier run left in ~/.npm is used), then
// require('peft-node') and a forward + backward on the tiny fixture, checked against PEFT's loss. It must work from
// the prebuilt binary (prebuilds/linux-x64-cpu), with nothing built.
//
// The prebuilt is not committed (see .gitignore): when prebuilds/ is missing or was built from other native sources,
// `npm run build:prebuilt` makes it first (beforeAll; ~1-2 min on 2 cores). The libtorch: the one the repo's own
// `npm install` located (the cache ~/.cache/peft-node when it fetched it there, else passed as PEFT_NODE_LIBTORCH, a
// user's own libtorch). Nothing is fetched but the npm dependencies.
// PEFT_NODE_SKIP_CLEAN_ROOM_TEST=1 skips it; PEFT_NODE_KEEP_CLEAN_ROOM=1 keeps the temp dir.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { spawnSync } from 'child_process';
import { nativeSourceHash } from '../lib/runtime/loader';

// eslint-disable-next-line @typescript-eslint/no-var-requires
const { locateLibtorch } = require('../scripts/libtorch.js');

const ROOT = path.resolve(__dirname, '..');
const VARIANT_DIR = path.join(ROOT, 'prebuilds', `${process.platform}-${process.arch}-cpu`);
const skip = process.env.PEFT_NODE_SKIP_CLEAN_ROOM_TEST === '1' || process.platform !== 'linux';
const secs = (t0: number) => ((Date.now() - t0) / 1000).toFixed(1);
const say = (msg: string) => process.stderr.write(`peft-node clean-room: ${msg}\n`);

function prebuiltIsCurrent(): boolean {
  try {
    const info = JSON.parse(fs.readFileSync(path.join(VARIANT_DIR, 'build-info.json'), 'utf8'));
    return fs.existsSync(path.join(VARIANT_DIR, info.file)) && info.sourceHash === nativeSourceHash(ROOT);
  } catch {
    return false;
  }
}

/** Runs a command, returning its output; throws with the output's tail on failure. */
function run(cmd: string, args: string[], opts: { cwd: string; env: NodeJS.ProcessEnv; timeout: number }): string {
  const r = spawnSync(cmd, args, { ...opts, encoding: 'utf8', maxBuffer: 64 << 20 });
  const out = `${r.stdout ?? ''}${r.stderr ?? ''}`;
  if (r.status !== 0) {
    throw new Error(`${path.basename(cmd)} ${args.join(' ')} failed (${r.error?.message ?? r.signal ?? `exit ${r.status}`}):\n${out.split('\n').slice(-40).join('\n')}`);
  }
  return out;
}

(skip ? describe.skip : describe)('clean room: npm pack → npm install (no compiler, empty npm cache) → forward', () => {
  let tmp = '';
  beforeAll(() => {
    if (prebuiltIsCurrent()) return;
    const t0 = Date.now();
    const jobs = process.env.CMAKE_BUILD_PARALLEL_LEVEL || String(Math.max(1, Math.min(os.availableParallelism(), Math.floor(os.totalmem() / (1.5 * 1024 ** 3)))));
    say(`prebuilds/ missing or stale: npm run build:prebuilt (-j ${jobs})`);
    run(process.execPath, [path.join(ROOT, 'scripts', 'prebuild.js'), '--jobs', jobs], { cwd: ROOT, env: process.env, timeout: 20 * 60_000 });
    say(`prebuilt made in ${secs(t0)} s`);
    expect(prebuiltIsCurrent()).toBe(true);
  }, 21 * 60_000);

  afterAll(() => {
    if (!tmp) return;
    if (process.env.PEFT_NODE_KEEP_CLEAN_ROOM === '1') say(`kept ${tmp}`);
    else fs.rmSync(tmp, { recursive: true, force: true });
  });

  test(
    'installs from the prebuilt with only node + npm on PATH, and computes PEFT\'s loss',
    async () => {
      const t0 = Date.now();
      tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'peft-node-clean-room-'));

      // 1. npm pack (dist/ is fresh: the jest global setup compiled it, so the prepare script can be skipped).
      const packDir = path.join(tmp, 'pack');
      fs.mkdirSync(packDir);
      const packOut = run('npm', ['pack', '--ignore-scripts', '--json', '--pack-destination', packDir], { cwd: ROOT, env: process.env, timeout: 120_000 });
      const packed = JSON.parse(packOut.slice(packOut.indexOf('[')))[0] as { filename: string; size: number; files: { path: string }[] };
      const names = packed.files.map((f) => f.path);
      expect(names).toEqual(expect.arrayContaining(['prebuilds/linux-x64-cpu/peft-node.napi.glibc.node', 'prebuilds/linux-x64-cpu/build-info.json',
        'dist/runtime/loader.js', 'scripts/install.js', 'scripts/libtorch.js', 'native/core/bloom.cpp']));
      expect(names.some((n) => n.startsWith('build/') || n.startsWith('test/') || n.startsWith('node_modules/'))).toBe(false);
      const tarball = path.join(packDir, path.basename(packed.filename));
      say(`packed ${path.basename(tarball)} (${(packed.size / 1e6).toFixed(2)} MB, ${names.length} files) in ${secs(t0)} s`);

      // 2. A PATH with node and npm only, and an npm cache of its own that starts empty.
      const bin = path.join(tmp, 'bin');
      fs.mkdirSync(bin);
      fs.symlinkSync(process.execPath, path.join(bin, 'node'));
      const npmCli = spawnSync('npm', ['prefix', '-g'], { encoding: 'utf8' }).stdout.trim();
      const onPath = (process.env.PATH ?? '').split(path.delimiter).map((d) => path.join(d, 'npm')).find((p) => fs.existsSync(p));
      const npmJs = [
        path.join(npmCli, 'lib', 'node_modules', 'npm', 'bin', 'npm-cli.js'),
        path.join(npmCli, 'node_modules', 'npm', 'bin', 'npm-cli.js'),
        ...(onPath ? [fs.realpathSync(onPath)] : []),
      ].find((p) => fs.existsSync(p) && p.endsWith('.js'));
      expect(npmJs).toBeDefined();
      fs.symlinkSync(npmJs as string, path.join(bin, 'npm'));
      for (const tool of ['c++', 'g++', 'gcc', 'cc', 'clang++', 'cmake', 'make', 'ninja', 'python3', 'python', 'pip']) {
        expect(fs.existsSync(path.join(bin, tool))).toBe(false);
      }
      const npmCache = path.join(tmp, 'npm-cache');

      // libtorch: the cache if that is where the repo's libtorch is, else the repo's libtorch as the user's own.
      const lt = await locateLibtorch({ allowFetch: false, log: () => undefined });
      const env: NodeJS.ProcessEnv = {
        PATH: bin,
        HOME: process.env.HOME,
        npm_config_cache: npmCache,
        // npm runs lifecycle scripts through a shell; by absolute path, so PATH keeps only node and npm.
        npm_config_script_shell: '/bin/sh',
        PEFT_NODE_NO_FETCH: '1',
        CC: '/nonexistent/cc',
        CXX: '/nonexistent/c++',
        ...(process.env.PEFT_NODE_CACHE ? { PEFT_NODE_CACHE: process.env.PEFT_NODE_CACHE } : {}),
        ...(process.env.XDG_CACHE_HOME ? { XDG_CACHE_HOME: process.env.XDG_CACHE_HOME } : {}),
        ...(lt.source === 'cache' ? {} : { PEFT_NODE_LIBTORCH: lt.root }),
      };

      // 3. A fresh project; npm install of the tarball (its dependencies from the registry).
      const proj = path.join(tmp, 'project');
      fs.mkdirSync(proj);
      fs.writeFileSync(path.join(proj, 'package.json'), JSON.stringify({ name: 'clean-room', version: '1.0.0', private: true }));
      const ti = Date.now();
      const installOut = run(
        path.join(bin, 'npm'),
        ['install', tarball, '--no-audit', '--no-fund', '--foreground-scripts', '--loglevel=error'],
        { cwd: proj, env, timeout: 240_000 },
      );
      say(`npm install (empty cache) in ${secs(ti)} s:\n    ${installOut.split('\n').filter((l) => l.startsWith('peft-node:')).join('\n    ')}`);
      expect(fs.readdirSync(npmCache)).toContain('_cacache'); // what it installed came through its own, new cache
      expect(installOut).toMatch(/using the prebuilt prebuilds\/linux-x64-cpu\/peft-node\.napi\.glibc\.node/);
      expect(installOut).not.toMatch(/building the native addon/);
      const pkgDir = path.join(proj, 'node_modules', 'peft-node');
      expect(fs.existsSync(path.join(pkgDir, 'build', 'Release'))).toBe(false);
      const record = JSON.parse(fs.readFileSync(path.join(pkgDir, 'build', 'peft-node-install.json'), 'utf8'));
      expect(record.addon).toBe('prebuilt');

      // 4. require + forward/backward on the golden case, in the project (same PATH).
      const script = path.join(proj, 'forward.js');
      fs.writeFileSync(
        script,
        `const path = require('path'), fs = require('fs');
const p = require('peft-node');
const golden = ${JSON.stringify(path.join(ROOT, 'test', 'fixtures', 'golden'))};
(async () => {
  const c = JSON.parse(fs.readFileSync(path.join(golden, 'cases.json'), 'utf8')).find((x) => x.name === 'h4_noproj_mean');
  const g = p.readSafetensors(path.join(golden, c.file)).tensors;
  p.set_num_threads(1);
  const m = await p.AutoModelForCausalLM.from_pretrained(${JSON.stringify(path.join(ROOT, 'test', 'fixtures'))} + '/' + c.model, { dtype: 'float32' });
  const prefix = g.get('param.prompt_encoder.' + c.adapter_name + '.embedding.weight');
  const out = await m.forward({ input_ids: g.get('input_ids'), attention_mask: g.get('attention_mask'), labels: g.get('labels') }, { prefix, backward: true });
  const loader = require(path.join(path.dirname(require.resolve('peft-node/package.json')), 'dist', 'runtime', 'loader.js'));
  const loaded = loader.loadedAddon();
  console.log(JSON.stringify({ loss: out.loss, expected: Number(g.get('loss').data[0]), gradDims: out.prefix_grad.dims, prefixDims: prefix.dims,
    torch: p.runtime_info().torchVersion, kind: loaded.kind, file: loaded.file, libtorch: loaded.libtorch && loaded.libtorch.root }));
  await m.dispose();
})().catch((e) => { console.error(e.code, e.message); process.exit(1); });
`,
      );
      const tf = Date.now();
      const fwdOut = run(path.join(bin, 'node'), [script], { cwd: proj, env, timeout: 120_000 });
      say(`require + forward/backward in ${secs(tf)} s; total ${secs(t0)} s`);
      const res = JSON.parse(fwdOut.trim().split('\n').pop() as string);
      expect(res.kind).toBe('prebuilt');
      expect(res.file).toBe(path.join(fs.realpathSync(pkgDir), 'prebuilds', 'linux-x64-cpu', 'peft-node.napi.glibc.node'));
      expect(res.torch).toBe(lt.version);
      expect(res.gradDims).toEqual(res.prefixDims);
      expect(Math.abs(res.loss - res.expected) / Math.abs(res.expected)).toBeLessThan(1e-5);
    },
    5 * 60_000,
  );
});
