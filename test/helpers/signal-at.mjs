/**
 * A preload (`node --import`) for a CLI child that sends the process SIGTERM at exact moments, from inside it (no
 * race with a watcher in another process). `SIGNAL_AT` lists them, comma-separated:
 * - `listening`: the moment the first TCP server listens (serve's proxy port, while the sidecar still starts);
 * - `listening-twice`: as `listening`, with two signals one after the other (a second Ctrl+C while it starts);
 * - `stopped`: the moment the `stopped` log line has been written (the stop is over, the process about to end).
 */
import fs from 'node:fs';
import net from 'node:net';

const at = new Set((process.env.SIGNAL_AT ?? '').split(','));
const signal = () => process.kill(process.pid, 'SIGTERM');

if (at.has('listening') || at.has('listening-twice')) {
  const listen = net.Server.prototype.listen;
  let armed = true;
  net.Server.prototype.listen = function (...args) {
    if (armed) {
      armed = false;
      this.once('listening', at.has('listening-twice') ? () => (signal(), signal()) : signal);
    }
    return listen.apply(this, args);
  };
}

if (at.has('stopped')) {
  // pino writes through sonic-boom, which calls these on the `fs` module object.
  const stopped = (data) => String(data).includes('"msg":"stopped"');
  for (const name of ['write', 'writeSync']) {
    const original = fs[name];
    fs[name] = function (fd, data, ...rest) {
      const result = original.call(this, fd, data, ...rest);
      if (fd === 1 && stopped(data)) signal();
      return result;
    };
  }
}
