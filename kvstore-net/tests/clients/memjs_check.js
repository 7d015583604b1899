// memjs (npm), a client that speaks only memcached's binary protocol,
// against the server at 127.0.0.1:<port>: every command memjs has, and
// many requests in flight at once (memjs matches replies by opaque).
// Usage: node memjs_check.js <port>; exits non-zero on the first failure.
'use strict';
const memjs = require('memjs');

const port = process.argv[2];
const client = memjs.Client.create('127.0.0.1:' + port, {
  retries: 1,
  timeout: 5,
  logger: { log: () => {} },
});

function check(cond, what) {
  if (!cond) {
    throw new Error('memjs: FAILED: ' + what);
  }
}

const str = (b) => (b === null ? null : b.toString());

async function statsOf(key) {
  return new Promise((resolve, reject) => {
    client.statsWithKey(key, (err, server, stats) => (err ? reject(err) : resolve(stats)));
  });
}

async function main() {
  check(await client.flush(), 'flush');
  check(await client.set('js:k', 'v1', { expires: 0 }), 'set');
  let got = await client.get('js:k');
  check(str(got.value) === 'v1', 'get returns the value: ' + str(got.value));
  check(got.flags.length === 4, 'get returns 4 bytes of flags');
  got = await client.get('js:missing');
  check(got.value === null, 'get of a missing key is null');

  check((await client.add('js:new', 'a')) === true, 'add of a new key');
  check((await client.add('js:new', 'b')) === false, 'add of an existing key is false');
  check((await client.replace('js:new', 'c')) === true, 'replace of an existing key');
  check((await client.replace('js:none', 'c')) === false, 'replace of a missing key is false');
  check(str((await client.get('js:new')).value) === 'c', 'value after replace');

  check((await client.append('js:new', '>')) === true, 'append');
  // memjs 1.3.2 sends its prepend with the opcode of append (0x0e), so
  // memcached appends too.
  check((await client.prepend('js:new', '<')) === true, 'prepend');
  got = await client.get('js:new');
  check(str(got.value) === 'c><', 'value after append and prepend: ' + str(got.value));
  // memcached answers "Not stored." (status 5), which memjs reports as an error.
  await client.append('js:none', 'x').then(
    () => check(false, 'append to a missing key is refused'),
    (e) => check(/APPEND/.test(e.message), 'append to a missing key: ' + e.message),
  );

  let n = await client.increment('js:n', 5, { initial: 10 });
  check(n.success && n.value === 10, 'increment of a missing key creates it with initial: ' + n.value);
  n = await client.increment('js:n', 5, {});
  check(n.success && n.value === 15, 'increment: ' + n.value);
  n = await client.decrement('js:n', 100, {});
  check(n.success && n.value === 0, 'decrement stops at 0: ' + n.value);
  let failed = false;
  try {
    await client.increment('js:new', 1, {});
  } catch (e) {
    failed = /Incr\/Decr on non-numeric value/.test(e.message) || /non-numeric/i.test(e.message);
  }
  check(failed, 'increment of a non-numeric value is an error');

  check((await client.touch('js:k', 100)) === true, 'touch');
  check((await client.touch('js:missing', 100)) === false, 'touch of a missing key is false');

  check((await client.delete('js:k')) === true, 'delete');
  check((await client.delete('js:k')) === false, 'delete of a missing key is false');
  check((await client.get('js:k')).value === null, 'get after delete');

  // Binary-safe keys and values: every byte value, a value with \r\n.
  const bin = Buffer.alloc(256);
  for (let i = 0; i < 256; i++) bin[i] = i;
  check(await client.set('js:bin', bin), 'set of binary data');
  check(Buffer.compare((await client.get('js:bin')).value, bin) === 0, 'binary data round trip');
  const big = Buffer.alloc(500 * 1024, 'x');
  check(await client.set('js:big', big), 'set of a 500 KiB value');
  check((await client.get('js:big')).value.length === big.length, 'get of a 500 KiB value');

  // Many requests in flight at once: replies are matched by opaque.
  const keys = Array.from({ length: 200 }, (_, i) => 'js:p' + i);
  await Promise.all(keys.map((k, i) => client.set(k, 'v' + i)));
  const values = await Promise.all(keys.map((k) => client.get(k)));
  values.forEach((v, i) => check(str(v.value) === 'v' + i, 'pipelined get ' + i));

  // An expired item is gone.
  check(await client.set('js:short', 'x', { expires: 1 }), 'set with expires');
  const deadline = Date.now() + 10000;
  while ((await client.get('js:short')).value !== null) {
    check(Date.now() < deadline, 'item with expires 1 expires');
    await new Promise((r) => setTimeout(r, 100));
  }

  const stats = await statsOf('');
  for (const name of ['pid', 'uptime', 'version', 'curr_items', 'cmd_get', 'cmd_set', 'get_hits', 'get_misses']) {
    check(name in stats, 'stats has ' + name);
  }
  check(Number(stats.cmd_set) > 0, 'stats counts sets');
  const settings = await statsOf('settings');
  check('maxconns' in settings, 'stats settings has maxconns');
  await new Promise((resolve, reject) => {
    client.resetStats((err) => (err ? reject(err) : resolve()));
  });
  check(Number((await statsOf('')).cmd_set) === 0, 'stats reset zeroes cmd_set');

  check(await client.flush(), 'flush');
  check((await client.get('js:new')).value === null, 'get after flush');
  client.quit();
  console.log('memjs: all checks passed');
}

main().catch((e) => {
  console.error(e.message);
  client.close();
  process.exit(1);
});
