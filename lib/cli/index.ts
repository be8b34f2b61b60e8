/**
 * The `peft-node` command line (bin/peft-node.js calls {@link main}): train, generate, chat, info, doctor, libtorch.
 *
 * Exit codes: 0 success; 1 a failure with a message (a missing file or directory, a model that does not load, ...);
 * 2 a bad command line (unknown option, invalid value: one line saying what is wrong); 130 training stopped by Ctrl-C
 * (a checkpoint was saved). A user's mistake never prints a stack trace; an unexpected error does, as does any error
 * with --verbose.
 */
import '../runtime/dispose_polyfill';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Argv } from 'yargs';
import yargs = require('yargs/yargs');
import { PeftNodeError } from '../errors';
import { Args, PACKAGE_ROOT, RAW_ARGV, UsageError, mark_output_closed } from './common';
import * as chat from './commands/chat';
import * as convert from './commands/convert';
import * as doctor from './commands/doctor';
import * as generate from './commands/generate';
import * as info from './commands/info';
import * as libtorch from './commands/libtorch';
import * as train from './commands/train';
import { LAUNCHED_WORKER_ENV, watch_launcher } from '../distributed/launch';

interface CommandModule {
  command: string;
  describe: string;
  builder(y: Argv): Argv;
  handler(args: Args): Promise<number>;
}

const COMMANDS: CommandModule[] = [train, generate, chat, info, convert, doctor, libtorch];
const COMMAND_NAMES = COMMANDS.map((c) => c.command.split(' ')[0]);
const NEED_COMMAND = `a command is needed: ${COMMAND_NAMES.join(', ')}`;

function packageVersion(): string {
  try {
    return String((JSON.parse(fs.readFileSync(path.join(PACKAGE_ROOT, 'package.json'), 'utf8')) as { version?: string }).version ?? 'unknown');
  } catch {
    return 'unknown';
  }
}

/** Node's system errors (ENOENT, EACCES, ENOSPC, ...) are about the user's files, not bugs. */
function isSystemError(err: unknown): err is NodeJS.ErrnoException {
  return err instanceof Error && typeof (err as NodeJS.ErrnoException).code === 'string' && /^E[A-Z]+$/.test((err as NodeJS.ErrnoException).code!) &&
    typeof (err as NodeJS.ErrnoException).syscall === 'string';
}

function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) cur[j] = Math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
    prev = cur;
  }
  return prev[b.length];
}

function didYouMean(word: string): string {
  const best = COMMAND_NAMES.map((c) => [c, editDistance(word.toLowerCase(), c)] as const).sort((x, y) => x[1] - y[1])[0];
  return best && best[1] <= 2 ? ` (did you mean ${best[0]}?)` : '';
}

function oneLine(s: string): string {
  return s.replace(/\s*\n\s*/g, ' ').trim();
}

/**
 * Runs the CLI on `argv` (process.argv without node and the script) and resolves with the exit code. Output goes to
 * process.stdout / process.stderr.
 */
export async function main(argv: string[]): Promise<number> {
  watch_launcher(); // a worker of `train --nproc N` exits with its launcher
  // `peft-node help [command]` is `peft-node [command] --help`.
  if (argv[0] === 'help') argv = [...argv.slice(1), '--help'];
  const verbose = argv.includes('--verbose');
  const commandName = COMMAND_NAMES.find((c) => c === argv.find((a) => !a.startsWith('-')));
  const help = commandName ? `peft-node ${commandName} --help` : 'peft-node --help';
  let code = 0;

  // `peft-node generate ... | head`: a closed pipe stops generation after the current token and ends the command
  // quietly, as for other Unix tools. (No process.exit here: it would wait for the native decode forever.)
  for (const stream of [process.stdout, process.stderr])
    if (stream.listenerCount('error') === 0)
      stream.on('error', (err: NodeJS.ErrnoException) => {
        if (err.code !== 'EPIPE' && err.code !== 'ERR_STREAM_DESTROYED') throw err;
        mark_output_closed();
      });

  // Node prints process warnings as "(node:PID) Name: ..."; print peft-node's like its other messages.
  const warningListeners = process.listeners('warning');
  process.removeAllListeners('warning');
  const onWarning = (w: Error) => process.stderr.write(`peft-node: warning: ${w.message}\n`);
  process.on('warning', onWarning);

  let y = yargs(argv)
    .scriptName('peft-node')
    .usage(
      '$0 <command> [options]\n\n' +
        'Prefix tuning (Hugging Face PEFT) of BLOOM models in Node.js, on libtorch. Without --model and --data, `train` ' +
        'and `generate` use an embedded tiny BLOOM and demo data, so `peft-node train && peft-node generate -p 你好` ' +
        'works out of the box.',
    )
    .parserConfiguration({ 'duplicate-arguments-array': false })
    .option('verbose', { type: 'boolean', global: true, describe: 'print stack traces with errors' });
  for (const c of COMMANDS)
    y = y.command(c.command, c.describe, (b) => c.builder(b), async (args) => {
      code = await c.handler({ ...(args as unknown as Args), [RAW_ARGV]: argv });
    });
  y = y
    .example('$0 train', 'prefix-tune the embedded tiny BLOOM on the demo rows (seconds)')
    .example('$0 generate -p "你好"', 'generate with the adapter just trained')
    .example('$0 train --model ./bloom-1b4-zh --data ./alpaca_data_zh/', 'the seed notebook on a real model')
    .epilogue(
      'Environment: PEFT_NODE_CACHE moves the cache (default ~/.cache/peft-node: libtorch, last_adapter.json). ' +
        'Exit codes: 0 ok, 1 error, 2 bad command line, 130 training interrupted (checkpoint saved).',
    )
    .demandCommand(1, NEED_COMMAND)
    .strict()
    .help()
    .alias('h', 'help')
    .version(packageVersion())
    .wrap(Math.min(110, process.stdout.columns || 100))
    .exitProcess(false)
    .fail((msg, err) => {
      // msg: a validation failure (unknown option, bad choice, missing argument); err alone: thrown by a handler.
      if (msg) throw new UsageError(unknownOptions(msg, argv));
      throw err;
    });

  try {
    if (argv.length === 0) {
      y.showHelp('error');
      return 2;
    }
    const first = argv.find((a) => !a.startsWith('-'));
    if (first !== undefined && !commandName && !argv.some((a) => ['--help', '-h', '--version'].includes(a)))
      throw new UsageError(`unknown command '${first}'${didYouMean(first)}: the commands are ${COMMAND_NAMES.join(', ')}`);
    await y.parseAsync();
    return code;
  } catch (err) {
    return report(err, verbose, help);
  } finally {
    process.off('warning', onWarning);
    for (const l of warningListeners) process.on('warning', l as (w: Error) => void);
  }
}

/**
 * yargs says "Unknown arguments: such-flag, suchFlag" for `--no-such-flag` (negation, camel-case expansion); say
 * "unknown option --no-such-flag" instead, as typed.
 */
function unknownOptions(msg: string, argv: string[]): string {
  const m = /^Unknown arguments?: (.*)$/.exec(msg);
  if (!m) return msg;
  const kebab = (n: string) => n.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
  const names = [...new Set(m[1].split(', ').filter((n) => n !== '').map(kebab))];
  const positional = names.filter((n) => argv.includes(n));
  const options = names
    .filter((n) => !argv.includes(n))
    .map((n) => (argv.some((a) => a === `--no-${n}` || a.startsWith(`--no-${n}=`)) ? `--no-${n}` : n.length === 1 ? `-${n}` : `--${n}`));
  const parts: string[] = [];
  if (options.length) parts.push(`unknown option${options.length > 1 ? 's' : ''} ${options.join(', ')}`);
  if (positional.length) parts.push(`unexpected argument${positional.length > 1 ? 's' : ''} ${positional.map((p) => JSON.stringify(p)).join(', ')}`);
  return parts.join('; ');
}

function report(err: unknown, verbose: boolean, help: string): number {
  // A worker of `train --nproc N` says which rank failed.
  const worker = process.env[LAUNCHED_WORKER_ENV] === '1' ? ` [rank ${process.env.RANK}]` : '';
  const write = (s: string) => process.stderr.write(`${s.replace(/^peft-node:/, `peft-node:${worker}`)}\n`);
  if (err instanceof UsageError) {
    write(`peft-node: ${oneLine(err.message)} (see ${help})`);
    if (verbose) write(err.stack ?? '');
    return 2;
  }
  if (err instanceof PeftNodeError || isSystemError(err)) {
    write(`peft-node: ${err.message}`);
    if (verbose && err.stack) write(err.stack);
    return 1;
  }
  const e = err instanceof Error ? err : new Error(String(err));
  write(`peft-node: unexpected error (please report it): ${e.stack ?? e.message}`);
  return 1;
}
