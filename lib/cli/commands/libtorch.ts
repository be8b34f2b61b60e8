/**
 * `peft-node libtorch locate|install`: scripts/libtorch.js's CLI (the locator `npm install` uses) as a subcommand.
 */
import type { Argv } from 'yargs';
import { Args, UsageError, string_flag } from '../common';
import { libtorchCli } from '../../runtime/libtorch';

export const command = 'libtorch <action>';
export const describe = 'Find libtorch as the build does (locate), or fetch it into the cache (install)';

const PRINT = ['root', 'lib', 'include', 'torch-dir', 'version', 'variant', 'cuda', 'defines'];

export function builder(y: Argv): Argv {
  return y
    .positional('action', { type: 'string', choices: ['locate', 'install'], describe: 'locate: say which libtorch would be used; install: fetch it into the cache' })
    .option('variant', { type: 'string', describe: 'cpu (default), cu126, cu128, ... (or PEFT_NODE_LIBTORCH_VARIANT)' })
    .option('torch-version', { type: 'string', describe: 'libtorch version to install (default: the pinned 2.13.0)' })
    .option('fetch', { type: 'boolean', describe: 'locate: fetch libtorch when it is not found (--no-fetch: never)', default: true })
    .option('json', { type: 'boolean', describe: 'locate: one line of JSON', default: false })
    .option('print', { type: 'string', choices: PRINT, describe: 'locate: print one field' })
    .example('$0 libtorch locate --no-fetch --json', 'which libtorch a build would use, without downloading')
    .example('$0 libtorch install --variant cu126', 'fetch the CUDA 12.6 libtorch into ~/.cache/peft-node/libtorch');
}

export async function handler(args: Args): Promise<number> {
  const action = string_flag(args, 'action');
  if (action !== 'locate' && action !== 'install') throw new UsageError('the action is locate or install');
  const argv: string[] = [action];
  const variant = string_flag(args, 'variant');
  if (variant !== undefined) argv.push('--variant', variant);
  const version = string_flag(args, 'torch-version');
  if (version !== undefined) argv.push('--version', version);
  if (action === 'locate') {
    if (args.fetch === false) argv.push('--no-fetch');
    if (args.json === true) argv.push('--json');
    const print = string_flag(args, 'print');
    if (print !== undefined) argv.push('--print', print);
  } else if (args.json === true || args.print !== undefined || args.fetch === false) {
    throw new UsageError('--json, --print and --no-fetch apply to `libtorch locate`');
  }
  return libtorchCli(argv);
}
