// csv-summary URL...: the JavaScript twin of guest/examples/csv-summary.
//
// Fetches the provider's postcode consumption CSV through fapi-host and prints the number of postcodes,
// total meters, total kWh, the mean of the per-postcode means and the top 5 postcodes by total
// consumption, in the same format as the Rust example, with the same CSV rules (RFC 4180 quoting, one
// record per line, a leading BOM dropped; rows with negative or non-finite numbers skipped as malformed:
// see guest/examples/csv-summary/src/summary.rs). The body is parsed line by line as it streams in, so
// its size does not matter. No dependencies besides ../fapi-guest.js.
//
// Build: `npm run build` in guest/js (see guest/README.md); run: `fapi-host run csv-summary-js.wasm -- URL`.

import { argv, get, write, FapiError } from '../fapi-guest.js';

const TOP = 5;
const U64_MAX = 0xffffffffffffffffn;
// The number rules of the Rust example's summary.rs (ASCII digits; no sign, so no negative numbers).
const METERS = /^[0-9]+$/;
const KWH = /^([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?$/;

/** `s` without leading and trailing spaces and tabs. */
function trimBlank(s) {
  return s.replace(/^[ \t]+|[ \t]+$/g, '');
}

/** The fields of one CSV line, or `null` if it is malformed: the rules of the Rust example's summary.rs
 * (RFC 4180 quoting; a quoted field cannot span lines). */
export function splitLine(line) {
  const fields = [];
  let i = 0;
  for (;;) {
    let j = i;
    while (line[j] === ' ' || line[j] === '\t') j += 1;
    let field;
    if (line[j] === '"') {
      field = '';
      j += 1;
      for (;;) {
        const end = line.indexOf('"', j);
        if (end < 0) return null; // still open at the end of the line
        field += line.slice(j, end);
        j = end + 1;
        if (line[j] !== '"') break;
        field += '"';
        j += 1;
      }
      while (line[j] === ' ' || line[j] === '\t') j += 1;
    } else {
      j = line.indexOf(',', i);
      if (j < 0) j = line.length;
      field = trimBlank(line.slice(i, j));
      if (field.includes('"')) return null;
    }
    fields.push(field);
    if (j === line.length) return fields;
    if (line[j] !== ',') return null;
    i = j + 1;
  }
}

/** A kWh figure (finite), or `null`. */
function kwh(s) {
  if (!KWH.test(s)) return null;
  const x = Number(s);
  return Number.isFinite(x) ? x : null;
}

/** `x` (not negative) with one decimal, as Rust's `{:.1}` and Python's `:.1f` print it: `toFixed`
 * rounds exact ties up where they round to even, and switches to exponent notation from 1e21. */
function fixed1(x) {
  if (x === Infinity) return 'inf';
  if (x >= 1e21) return `${BigInt(x)}.0`;
  if (Number.isInteger(4 * x) && (4 * x) % 2 === 1) {
    // x = q / 4 with q odd: exactly halfway between the tenths n / 10 and (n + 1) / 10.
    let n = (BigInt(4 * x) * 5n - 1n) / 2n;
    if (n % 2n === 1n) n += 1n;
    return `${n / 10n}.${n % 10n}`;
  }
  return x.toFixed(1);
}

/** `s` padded with spaces to `width` characters (code points, as Rust and Python count them). */
function padEndChars(s, width) {
  return s + ' '.repeat(Math.max(0, width - [...s].length));
}

/** The summary text of the CSV `lines` (an iterable of text lines, header first). */
export function summarise(lines) {
  const it = lines[Symbol.iterator]();
  const first = it.next();
  if (first.done) throw new Error('empty body: expected a CSV header');
  let headerLine = first.value.replace(/\r+$/, '');
  if (headerLine.startsWith('\ufeff')) headerLine = headerLine.slice(1);
  const header = splitLine(headerLine);
  if (header === null) throw new Error('the CSV header line is malformed (a stray or unclosed quote)');
  const col = {};
  for (const name of ['postcode', 'num_meters', 'total_consumption_kwh', 'mean_consumption_kwh']) {
    col[name] = header.indexOf(name);
    if (col[name] < 0) throw new Error(`the CSV header has no \`${name}\` column (columns: ${header.join(', ')})`);
  }
  let postcodes = 0;
  let meters = 0n; // exact, as Rust's u128
  let skipped = 0;
  let totalKwh = 0;
  let sumOfMeans = 0;
  const top = []; // sorted by total, largest first; the first seen wins ties
  for (let line of it) {
    line = line.replace(/\r+$/, '');
    if (trimBlank(line) === '') continue;
    const f = splitLine(line) ?? [];
    const postcode = f[col.postcode];
    const mText = f[col.num_meters];
    const m = mText !== undefined && METERS.test(mText) ? BigInt(mText) : null;
    const total = f[col.total_consumption_kwh] === undefined ? null : kwh(f[col.total_consumption_kwh]);
    const mean = f[col.mean_consumption_kwh] === undefined ? null : kwh(f[col.mean_consumption_kwh]);
    if (postcode === undefined || m === null || m > U64_MAX || total === null || mean === null) {
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
    `total kWh:          ${fixed1(totalKwh)}`,
    `mean of means kWh:  ${fixed1(meanOfMeans)}`,
  ];
  if (skipped) out.push(`malformed rows:     ${skipped} (skipped)`);
  out.push('', `top ${TOP} postcodes by total consumption:`,
    `${'rank'.padStart(4)}  ${'postcode'.padEnd(10)} ${'meters'.padStart(8)} ${'total kWh'.padStart(16)}`);
  top.forEach((r, i) => {
    out.push(`${String(i + 1).padStart(4)}  ${padEndChars(r.postcode, 10)} ${String(r.meters).padStart(8)} ${fixed1(r.total).padStart(16)}`);
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
