#!/usr/bin/env node
'use strict';
// The `peft-node` command: the compiled CLI (npm install builds dist/ through the "prepare" script).
let cli;
try {
  cli = require('../dist/cli/index.js');
} catch (err) {
  if (err && err.code === 'MODULE_NOT_FOUND' && String(err.message).includes('dist/cli/index.js')) {
    process.stderr.write('peft-node: the CLI is not compiled (dist/cli/index.js is missing): run `npm run build` in the peft-node package\n');
    process.exit(1);
  }
  throw err;
}
cli.main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err) => {
    process.stderr.write(`peft-node: ${err && err.message ? err.message : err}\n`);
    process.exit(1);
  },
);
