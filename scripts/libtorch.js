#!/usr/bin/env node
'use strict';
// `node scripts/libtorch.js locate|install ...` (npm run libtorch, binding.gyp, cmake -DTorch_DIR=...): the CLI of
// scripts/libtorch/ (see its index.js for the files and locate.js for the one search order). Requiring this file
// gives that module too.
//   node scripts/libtorch.js locate [--no-fetch] [--json] [--print root|lib|include|torch-dir|version|variant|cuda|defines]
//   node scripts/libtorch.js install [--variant cpu|cu126|...] [--version X.Y.Z]
//
// Environment:
//   PEFT_NODE_LIBTORCH, LIBTORCH          explicit libtorch dir (version 2.11-2.14 accepted, the pin 2.13.0 preferred)
//   PEFT_NODE_ALLOW_VERSION_MISMATCH=1   accept an explicit dir outside 2.11-2.14 or of unknown version
//   PEFT_NODE_VARIANT (or the older PEFT_NODE_LIBTORCH_VARIANT)  variant to locate/fetch: cpu (default), cu126, cu130, ...
//   PEFT_NODE_CACHE                      cache base (default ${XDG_CACHE_HOME:-~/.cache}/peft-node); libtorch lives in <base>/libtorch
//   PEFT_NODE_PYTHON                     python executable to probe and to run pip with (default: python3, then python)
//   PEFT_NODE_NO_FETCH=1                 never fetch (same as --no-fetch)
//   PEFT_NODE_LIBTORCH_URL               libtorch zip URL (http(s)://, file:// or a local path) for mirrors
//   PEFT_NODE_TORCH_INDEX_URL            pip index for the torch wheel (default https://download.pytorch.org/whl/<variant>)

const libtorch = require('./libtorch/index.js');

module.exports = libtorch;

if (require.main === module) {
  libtorch.main(process.argv.slice(2)).then(
    (code) => (process.exitCode = code),
    (e) => {
      process.stderr.write(`peft-node: ${e.stack || e}\n`);
      process.exitCode = 1;
    },
  );
}
