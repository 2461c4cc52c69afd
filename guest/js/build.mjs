// Build a JavaScript plugin into a WebAssembly component for `fapi-host run`, with componentize-js's JS API.
//
//   node build.mjs [SOURCE.js [OUT.wasm]]     default: examples/csv-summary.js -> csv-summary-js.wasm
//   npm run build                             the same
//
// SOURCE is an ES module that exports `run = { run() {...} }` (the `wasi:cli/run` export of the
// `plugin` world of ../../wit/fapi.wit). Works offline once `npm ci` has run.
// (`jco componentize` 1.35 fails on this WIT with "failed to get path metadata": its pre-check reads the
// WIT folder through wasm-tools running in a WASI shim that cannot see it; componentize-js itself is fine.)
import { componentize } from '@bytecodealliance/componentize-js';
import { writeFile } from 'node:fs/promises';
import { dirname, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const source = resolve(process.argv[2] ?? resolve(here, 'examples/csv-summary.js'));
const out = resolve(process.argv[3] ?? 'csv-summary-js.wasm');
// componentize-js lets the module import only files under the current directory (when the module is
// under it): build from guest/js so that `../fapi-guest.js` is found wherever this is run from.
if (source.startsWith(here + sep)) process.chdir(here);
const { component } = await componentize({
  sourcePath: source,
  witPath: resolve(here, '../../wit'),
  worldName: 'plugin',
});
await writeFile(out, component);
console.log(`${out}: ${component.length} bytes`);
