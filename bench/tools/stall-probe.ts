/**
 * How steadily the CPU this runs on delivers: it repeats one fixed piece of
 * work (~40 µs) with short idle pauses in between, like a proxy at one
 * connection, and prints how long each piece took. On a shared VM the host
 * now and then slows a whole vCPU down (on the build machine: every process
 * 5–13× slower for 30–80 ms, every ~1.5 s); nothing inside the VM can avoid
 * that, and a request caught in one takes that many times longer, through any
 * proxy. `lib/stall.ts` runs it and reads the output.
 *
 * The piece is native code (SHA-256 of 40 KiB), not a JavaScript loop: under
 * node 24 V8 ran such a loop, after each pause, in code ~14× slower than its
 * best (median 300+ µs against 22), so the probe measured V8's tiers instead of
 * the CPU; the hash takes the same time under node 20 and 24.
 *
 * Usage: node stall-probe.js <seconds>
 * Prints one JSON line: {"pieceUs":[…], "elapsedUs": n}
 */
import { createHash } from 'node:crypto';

const seconds = Number(process.argv[2] ?? '2');
const idle = new Int32Array(new SharedArrayBuffer(4));

/**
 * The piece: the same amount of work in every run (~40 µs on the build machine), so that its time compares
 * across rounds and runs — it is also the bench's measure of how fast the CPU itself ran.
 */
const data = Buffer.alloc(40 * 1024, 0x5a);
let sink = 0;

function timed(): number {
  const start = process.hrtime.bigint();
  sink ^= createHash('sha256').update(data).digest()[0]!;
  return Number(process.hrtime.bigint() - start) / 1000;
}

for (let i = 0; i < 300; i++) timed(); // warm up

const pieceUs: number[] = [];
const started = process.hrtime.bigint();
const end = started + BigInt(Math.round(seconds * 1e9));
while (process.hrtime.bigint() < end) {
  pieceUs.push(Math.round(timed()));
  Atomics.wait(idle, 0, 0, 0.05); // 50 µs idle, as between requests
}
process.stdout.write(`${JSON.stringify({ pieceUs, elapsedUs: Math.round(Number(process.hrtime.bigint() - started) / 1000), sink: sink & 1 })}\n`);
