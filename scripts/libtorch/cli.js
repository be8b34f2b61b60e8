'use strict';
// The CLI (scripts/libtorch.js, `npm run libtorch`, `npx peft-node libtorch`):
//   node scripts/libtorch.js locate [--no-fetch] [--json] [--print root|lib|include|torch-dir|version|variant|cuda|defines]
//   node scripts/libtorch.js install [--variant cpu|cu126|...] [--version X.Y.Z]
// Log lines go to stderr prefixed "peft-node:", so stdout stays machine-readable.

const { defaultLog } = require('./facts.js');
const { locateLibtorch, installLibtorch } = require('./locate.js');

function parseArgs(argv) {
  const args = { _: [] };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--no-fetch') args.noFetch = true;
    else if (a === '--json') args.json = true;
    else if (a === '--print' || a === '--variant' || a === '--version') args[a.slice(2)] = argv[++i];
    else if (/^--(print|variant|version)=/.test(a)) args[a.slice(2, a.indexOf('='))] = a.slice(a.indexOf('=') + 1);
    else if (a === '-h' || a === '--help') args.help = true;
    else if (a.startsWith('--')) throw new Error(`unknown option ${a}`);
    else args._.push(a);
  }
  return args;
}

const USAGE = `usage:
  node scripts/libtorch.js locate [--no-fetch] [--json] [--print root|lib|include|torch-dir|version|variant|cuda|defines]
  node scripts/libtorch.js install [--variant cpu|cu126|...] [--version X.Y.Z]`;

async function main(argv) {
  let args;
  try {
    args = parseArgs(argv);
  } catch (e) {
    process.stderr.write(`${e.message}\n${USAGE}\n`);
    return 2;
  }
  // `--print x` without a command means locate (shorter in binding.gyp).
  const cmd = args._[0] || (args.print ? 'locate' : null);
  if (args.help || !['locate', 'install'].includes(cmd)) {
    process.stderr.write(`${USAGE}\n`);
    return args.help ? 0 : 2;
  }
  const opts = { variant: args.variant, version: args.version, allowFetch: !args.noFetch };
  let result;
  try {
    result = cmd === 'install' ? await installLibtorch(opts) : await locateLibtorch(opts);
  } catch (e) {
    process.stderr.write(`peft-node: ${e.message}\n`);
    return 1;
  }
  if (args.print) {
    const one = {
      root: result.root,
      lib: result.libDir,
      include: result.includeDirs.join(' '),
      'torch-dir': result.torchDir,
      version: result.version,
      variant: result.variant,
      cuda: result.cuda ? '1' : '0',
      defines: result.compileDefinitions.join(' '),
    }[args.print];
    if (one === undefined) {
      process.stderr.write(`unknown --print value ${args.print}\n${USAGE}\n`);
      return 2;
    }
    process.stdout.write(`${one}\n`);
  } else {
    if (!args.json) defaultLog(`libtorch ${result.version} (${result.variant}) from ${result.source}: ${result.root}`);
    process.stdout.write(`${JSON.stringify(result, null, args.json ? 0 : 2)}\n`);
  }
  return 0;
}

module.exports = { main };
