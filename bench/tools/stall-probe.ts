/**
 * How steadily the CPU this runs on delivers: it repeats one fixed piece of
 * work (~40 µs) with short idle pauses in between, like a proxy at one
 * connection, and prints how long each piece took. On a shared VM the host
 * now and then slows a whole vCPU down (on the build machine: every process
 * 5–13× slower for 30–80 ms, every ~1.5 s); nothing inside the VM can avoid
 * that, and a request caught in one takes that many times longer, through any
 * proxy. `lib/stall.ts` runs it and reads the output.
 *
 * Usage: node stall-probe.js <seconds>
 * Prints one JSON line: {"pieceUs":[…], "elapsedUs": n}
 */
const seconds = Number(process.argv[2] ?? '2');
const idle = new Int32Array(new SharedArrayBuffer(4));

function work(n: number): number {
  let x = 0;
  for (let i = 0; i < n; i++) x = (x + Math.imul(i, i)) | 0;
  return x;
}

function timed(n: number): number {
  const start = process.hrtime.bigint();
  sink ^= work(n);
  return Number(process.hrtime.bigint() - start) / 1000;
}

/**
 * The piece: the same amount of work in every run (30–55 µs on the build machine), so that its time compares
 * across rounds and runs — it is also the bench's measure of how fast the CPU itself ran.
 */
const n = 40_000;
let sink = 0;
for (let i = 0; i < 300; i++) sink ^= work(n); // warm up: optimized code from here on

const pieceUs: number[] = [];
const started = process.hrtime.bigint();
const end = started + BigInt(Math.round(seconds * 1e9));
while (process.hrtime.bigint() < end) {
  pieceUs.push(Math.round(timed(n)));
  Atomics.wait(idle, 0, 0, 0.05); // 50 µs idle, as between requests
}
process.stdout.write(`${JSON.stringify({ pieceUs, elapsedUs: Math.round(Number(process.hrtime.bigint() - started) / 1000), sink: sink & 1 })}\n`);
