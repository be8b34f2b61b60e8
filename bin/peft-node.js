#!/usr/bin/env node
'use strict';
// The `peft-node` command: the compiled CLI (npm install builds dist/ through the "prepare" script).
require('../dist/cli/index.js').main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err) => {
    process.stderr.write(`peft-node: ${err && err.message ? err.message : err}\n`);
    process.exit(1);
  },
);
