// csv-summary URL...: the JavaScript twin of guest/examples/csv-summary.
//
// Fetches the provider's postcode consumption CSV through fapi-host and prints the number of postcodes,
// total meters, total kWh, the mean of the per-postcode means and the top 5 postcodes by total
// consumption, in the same format as the Rust example. The body is parsed line by line as it streams
// in, so its size does not matter. No dependencies besides ../fapi-guest.js.
//
// Build: `npm run build` in guest/js (see guest/README.md); run: `fapi-host run csv-summary-js.wasm -- URL`.

import { argv, get, write, FapiError } from '../fapi-guest.js';

const TOP = 5;

/** The summary text of the CSV `lines` (an iterable of text lines, header first). */
export function summarise(lines) {
  const it = lines[Symbol.iterator]();
  const first = it.next();
  const header = first.done ? [] : first.value.split(',').map((s) => s.trim());
  const col = {};
  for (const name of ['postcode', 'num_meters', 'total_consumption_kwh', 'mean_consumption_kwh']) {
    col[name] = header.indexOf(name);
    if (col[name] < 0) throw new Error(`the CSV header has no \`${name}\` column: ${JSON.stringify(header)}`);
  }
  let postcodes = 0;
  let meters = 0;
  let skipped = 0;
  let totalKwh = 0;
  let sumOfMeans = 0;
  const top = []; // sorted by total, largest first; the first seen wins ties
  for (let line of it) {
    if (line.trim() === '') continue;
    const f = line.split(',').map((s) => s.trim());
    const postcode = f[col.postcode];
    const m = Number(f[col.num_meters]);
    const total = Number(f[col.total_consumption_kwh]);
    const mean = Number(f[col.mean_consumption_kwh]);
    if (postcode === undefined || !Number.isInteger(m) || m < 0 || !Number.isFinite(total) || !Number.isFinite(mean)
        || f[col.num_meters] === '' || f[col.total_consumption_kwh] === '' || f[col.mean_consumption_kwh] === '') {
      skipped += 1;
      continue;
    }
    postcodes += 1;
    meters += m;
    totalKwh += total;
    sumOfMeans += mean;
    if (top.length < TOP || top[top.length - 1].total < total) {
      let at = top.findIndex((r) => r.total < total);
      if (at < 0) at = top.length;
      top.splice(at, 0, { postcode, meters: m, total });
      top.length = Math.min(top.length, TOP);
    }
  }
  const meanOfMeans = postcodes ? sumOfMeans / postcodes : 0;
  const out = [
    `postcodes:          ${postcodes}`,
    `meters:             ${meters}`,
    `total kWh:          ${totalKwh.toFixed(1)}`,
    `mean of means kWh:  ${meanOfMeans.toFixed(1)}`,
  ];
  if (skipped) out.push(`malformed rows:     ${skipped} (skipped)`);
  out.push('', `top ${TOP} postcodes by total consumption:`,
    `${'rank'.padStart(4)}  ${'postcode'.padEnd(10)} ${'meters'.padStart(8)} ${'total kWh'.padStart(16)}`);
  top.forEach((r, i) => {
    out.push(`${String(i + 1).padStart(4)}  ${r.postcode.padEnd(10)} ${String(r.meters).padStart(8)} ${r.total.toFixed(1).padStart(16)}`);
  });
  return out.join('\n') + '\n';
}

/** Summarise each URL in turn; one that fails is reported and the others still summarised. */
function main(args) {
  if (args.length < 2) {
    console.error('usage: csv-summary URL...');
    return false;
  }
  let ok = true;
  for (const url of args.slice(1)) {
    try {
      const response = get(url).raiseForStatus();
      const summary = summarise(response.lines());
      write(`interaction id:     ${response.interactionId}\n${summary}`);
    } catch (e) {
      console.error(`csv-summary: ${url}: ${e instanceof FapiError || e instanceof Error ? e.message : e}`);
      ok = false;
    }
  }
  return ok;
}

/** The `wasi:cli/run` export: the plugin's `main`. Throwing makes the exit status 1. */
export const run = {
  run() {
    if (!main(argv())) throw new Error('csv-summary failed');
  },
};
