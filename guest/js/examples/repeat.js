// repeat URL N: GET URL N times through fapi-host, reading each body whole; prints
// `{"requests":N,"bytes":B}`. The per-request benchmark of `fapi-bench lang` (the JavaScript twin of the
// probe's `repeat`).

import { argv, get, write } from '../fapi-guest.js';

export const run = {
  run() {
    const args = argv();
    if (args.length !== 3) {
      console.error('usage: repeat URL N');
      throw new Error('usage');
    }
    const [, url, n] = args;
    let bytes = 0;
    for (let i = 0; i < Number(n); i++) bytes += get(url).bytes().length;
    write(`${JSON.stringify({ requests: Number(n), bytes })}\n`);
  },
};
