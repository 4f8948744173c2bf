/** One line describing the machine a result came from. */
import { cpus, release, totalmem } from 'node:os';
import { allowedCpus } from './proc.js';

export function machineLine(): string {
  const model = cpus()[0]?.model.replace(/\s+/g, ' ').trim() ?? 'unknown CPU';
  const n = allowedCpus().length || cpus().length;
  return `${model}, ${n} CPUs, ${Math.round(totalmem() / 2 ** 30)} GiB RAM, Linux ${release()}, Node ${process.version}`;
}
