// Proves binding.gyp builds the real native sources with node-gyp and the result loads: a copy of the package
// (binding.gyp, native/, scripts/*.js and scripts/libtorch/, package.json, node_modules symlink) in a temp dir, `node-gyp rebuild`, then
// require() of build/Release/peft_node.node in a child process. Takes minutes (libtorch headers: ~35 s per
// translation unit). PEFT_NODE_SKIP_GYP_TEST=1 skips it; PEFT_NODE_KEEP_GYP_TEST=1 keeps the temp dir.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { spawn, spawnSync } from 'child_process';

// eslint-disable-next-line @typescript-eslint/no-var-requires
const { locateLibtorch } = require('../scripts/libtorch.js');

const ROOT = path.resolve(__dirname, '..');
const skip = process.env.PEFT_NODE_SKIP_GYP_TEST === '1';

/** node-gyp's CLI: npm's own (npm sets npm_config_node_gyp for scripts), a local one, or the one bundled with npm. */
function findNodeGyp(): string {
  const candidates: string[] = [];
  if (process.env.npm_config_node_gyp) candidates.push(process.env.npm_config_node_gyp);
  try {
    candidates.push(require.resolve('node-gyp/bin/node-gyp.js', { paths: [ROOT] }));
  } catch {
    /* not a dependency */
  }
  const npmRoot = spawnSync('npm', ['root', '-g'], { encoding: 'utf8' }).stdout?.trim();
  if (npmRoot) candidates.push(path.join(npmRoot, 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'));
  candidates.push(path.resolve(path.dirname(process.execPath), '..', 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'));
  const found = candidates.find((c) => fs.existsSync(c));
  if (!found) throw new Error(`node-gyp not found (looked at ${candidates.join(', ')}); add node-gyp as a devDependency`);
  return found;
}

/** --nodedir for headers installed next to node (distro packages): node-gyp would otherwise download them. */
function nodedirArgs(): string[] {
  if (process.env.npm_config_nodedir) return [`--nodedir=${process.env.npm_config_nodedir}`];
  const prefix = path.resolve(path.dirname(process.execPath), '..');
  try {
    const h = fs.readFileSync(path.join(prefix, 'include', 'node', 'node_version.h'), 'utf8');
    const v = ['MAJOR', 'MINOR', 'PATCH'].map((k) => (new RegExp(`#define NODE_${k}_VERSION (\\d+)`).exec(h) || [])[1]).join('.');
    if (`v${v}` === process.version) return [`--nodedir=${prefix}`];
  } catch {
    /* no local headers: node-gyp uses its header cache (~/.cache/node-gyp) or downloads */
  }
  return [];
}

(skip ? describe.skip : describe)('binding.gyp (node-gyp)', () => {
  test(
    'node-gyp rebuild compiles native/core + native/binding and the addon loads',
    async () => {
      const libtorch = await locateLibtorch({ log: (m: string) => process.stderr.write(`peft-node: ${m}\n`) });
      const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'peft-node-gyp-'));
      try {
        for (const f of ['binding.gyp', 'package.json']) fs.copyFileSync(path.join(ROOT, f), path.join(tmp, f));
        fs.cpSync(path.join(ROOT, 'native'), path.join(tmp, 'native'), { recursive: true });
        // Only the scripts' .js files: scripts/ may also hold a Python venv for the fixture generator.
        fs.mkdirSync(path.join(tmp, 'scripts'));
        for (const f of fs.readdirSync(path.join(ROOT, 'scripts')).filter((n) => n.endsWith('.js'))) {
          fs.copyFileSync(path.join(ROOT, 'scripts', f), path.join(tmp, 'scripts', f));
        }
        fs.cpSync(path.join(ROOT, 'scripts', 'libtorch'), path.join(tmp, 'scripts', 'libtorch'), { recursive: true });
        fs.symlinkSync(path.join(ROOT, 'node_modules'), path.join(tmp, 'node_modules'), 'dir');

        const jobs = Math.max(1, Math.min(os.availableParallelism(), Math.floor(os.totalmem() / (1.5 * 1024 ** 3))));
        const args = [findNodeGyp(), 'rebuild', '-j', String(jobs), ...nodedirArgs()];
        const logFile = path.join(tmp, 'node-gyp.log');
        const started = Date.now();
        const code = await new Promise<number | null>((resolve) => {
          const out = fs.openSync(logFile, 'w');
          // The located dir is passed on so gyp's command expansions resolve the same libtorch without probing again.
          const p = spawn(process.execPath, args, {
            cwd: tmp,
            stdio: ['ignore', out, out],
            env: { ...process.env, PEFT_NODE_LIBTORCH: libtorch.root },
          });
          p.on('close', (c) => {
            fs.closeSync(out);
            resolve(c);
          });
        });
        const seconds = ((Date.now() - started) / 1000).toFixed(0);
        const tail = fs.readFileSync(logFile, 'utf8').split('\n').filter((l) => !l.startsWith('gyp info')).slice(-40).join('\n');
        if (code !== 0) throw new Error(`node-gyp rebuild failed (exit ${code}, ${seconds} s):\n${tail}`);
        process.stderr.write(`peft-node: node-gyp rebuild took ${seconds} s with -j ${jobs}\n`);

        const addon = path.join(tmp, 'build', 'Release', 'peft_node.node');
        expect(fs.existsSync(addon)).toBe(true);
        // The rpath must point at libtorch: load it with no LD_LIBRARY_PATH help.
        const env = { ...process.env };
        delete env.LD_LIBRARY_PATH;
        const probe = `const m = require(${JSON.stringify(addon)});
          const info = typeof m.info === 'function' ? m.info() : null;
          console.log(JSON.stringify({ type: typeof m, keys: Object.keys(m).sort(), BloomModel: typeof m.BloomModel,
                                       PrefixEncoder: typeof m.PrefixEncoder, torchVersion: info && info.torchVersion }));`;
        const r = spawnSync(process.execPath, ['-e', probe], { encoding: 'utf8', env, timeout: 120_000 });
        if (r.status !== 0) throw new Error(`loading ${addon} failed (status ${r.status}):\n${r.stderr}`);
        const loaded = JSON.parse(r.stdout.trim().split('\n').pop() as string);
        expect(loaded.type).toBe('object');
        expect(loaded.BloomModel).toBe('function');
        expect(loaded.PrefixEncoder).toBe('function');
        if (loaded.torchVersion !== null) expect(String(loaded.torchVersion)).toBe(libtorch.version);
      } finally {
        if (process.env.PEFT_NODE_KEEP_GYP_TEST === '1') process.stderr.write(`peft-node: kept ${tmp}\n`);
        else fs.rmSync(tmp, { recursive: true, force: true });
      }
    },
    15 * 60_000,
  );
});
