/**
 * A preload (`node --import`) for a CLI child: the moment `fs/promises.mkdtemp` has created a directory, the process
 * sends itself SIGTERM — a stop that comes exactly while the demo tenant starts, without racing a watcher in
 * another process.
 */
import fsp from 'node:fs/promises';
import { syncBuiltinESMExports } from 'node:module';

const mkdtemp = fsp.mkdtemp;
fsp.mkdtemp = async (...args) => {
  const dir = await mkdtemp(...args);
  process.kill(process.pid, 'SIGTERM');
  return dir;
};
syncBuiltinESMExports();
