/**
 * The native addon's loader: which binary, against which libtorch, and how that libtorch gets into the process.
 * This file is the public face; the work is split by concern:
 *   ./candidates     candidate policy: PEFT_NODE_ADDON, the local build, the prebuilt of the wanted variant, in order
 *   ./load           loadAddon: resolve, preload the prebuilt's libtorch, require
 *   ./load_error     the error prose when nothing loads (ERR_ADDON_LOAD / ERR_LIBTORCH_NOT_FOUND)
 *   ./addon_report   the data `peft-node doctor` shows
 *   ./libtorch       the door to scripts/libtorch/, shared with `npm install`: the libtorch search order (locate.js),
 *                    prebuilt layout and source hash (prebuilt.js), the dlopen/CUDA preload (preload.js) and the
 *                    child-process test load with its cached verdict (test-load.js)
 */
export * from './libtorch';
export type { LoaderOptions, Resolution } from './candidates';
export { resolveAddon, wantedVariant } from './candidates';
export type { LoadedAddon } from './load';
export { loadAddon, loadedAddon } from './load';
export { loadError } from './load_error';
export type { AddonReport, PrebuiltSummary } from './addon_report';
export { addonReport } from './addon_report';
