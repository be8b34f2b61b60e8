/**
 * The error a failed resolution raises: every candidate and why it was not used, then how to fix it. The code says
 * which fix matters: ERR_LIBTORCH_NOT_FOUND when a prebuilt only lacks its libtorch and there is no local build,
 * ERR_ADDON_LOAD otherwise.
 */
import * as path from 'node:path';
import { PeftNodeError } from '../errors';
import type { LoaderOptions, Resolution } from './candidates';
import { BuildInfo, PACKAGE_ROOT, PINNED_VERSION, prebuiltDir, readJson } from './libtorch';

export function loadError(res: Resolution, opts: LoaderOptions = {}, cause?: unknown): PeftNodeError {
  const root = opts.root ?? PACKAGE_ROOT;
  const cli = path.join(root, 'scripts', 'libtorch.js');
  const lines = res.attempts.map((a, i) => `  ${i + 1}. ${a.kind === 'env' ? 'PEFT_NODE_ADDON' : a.kind === 'local' ? 'local build' : 'prebuilt'} ${a.file}: ${a.reason}`);
  const prebuiltMissingLibtorch = res.attempts.some((a) => a.libtorchMissing);
  const localPresent = res.attempts.some((a) => a.kind === 'local' && !/^not built/.test(a.reason ?? ''));
  const info = readJson<BuildInfo>(path.join(prebuiltDir(root, res.variant), 'build-info.json'));
  const need = info ? `libtorch ${info.libtorch.version} (${info.libtorch.variant})` : `libtorch (${res.variant})`;
  const otherVersion = info && info.libtorch.version !== PINNED_VERSION;
  const variantArg = info ? ` --variant ${info.libtorch.variant}` : '';
  // The CLI spells it --torch-version (yargs keeps --version for the package's own).
  const cliArgs = `${variantArg}${otherVersion ? ` --torch-version ${info.libtorch.version}` : ''}`;
  const scriptArgs = `${variantArg}${otherVersion ? ` --version ${info.libtorch.version}` : ''}`;
  const fixes = [
    ...(prebuiltMissingLibtorch
      ? [
          `  - fetch ${need} for the prebuilt binary: \`npx peft-node libtorch install${cliArgs}\` ` +
            `(or \`node ${cli} install${scriptArgs}\`), or set PEFT_NODE_LIBTORCH to a ${need} dir;`,
        ]
      : []),
    `  - build the addon from source: \`npm rebuild peft-node\` in your project, or \`npm run build:native\` in ${root} ` +
      '(needs a C++20 compiler and cmake >= 3.18; libtorch is located or fetched);',
    `  - \`node ${cli} locate\` shows where libtorch is looked for; PEFT_NODE_VARIANT picks the variant ` +
      `(now ${res.variant}, from ${res.variantReason}); PEFT_NODE_ADDON loads a binary you name.`,
  ];
  const code = prebuiltMissingLibtorch && !localPresent ? 'ERR_LIBTORCH_NOT_FOUND' : 'ERR_ADDON_LOAD';
  const head =
    code === 'ERR_LIBTORCH_NOT_FOUND'
      ? `peft-node cannot run: ${need} was not found, and there is no local build of the native addon. Tried:`
      : `peft-node's native addon could not be loaded (variant ${res.variant}). Tried:`;
  return new PeftNodeError(code, [head, ...(lines.length ? lines : ['  (no candidate)']), 'To fix, do one of:', ...fixes].join('\n'), { cause });
}
