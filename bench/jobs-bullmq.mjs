// bench/jobs-bullmq.mjs — BullMQ's side of bench/jobs.sh: the same two workloads as
// `mortar bench jobs`, with BullMQ's own Queue and Worker, printing the same JSON line.
//
//   node jobs-bullmq.mjs throughput <redis-host> <redis-port> <prefix> <jobs> <batch> <concurrency>
//   node jobs-bullmq.mjs latency    <redis-host> <redis-port> <prefix> <rate> <seconds> <concurrency>
//
// throughput: addBulk(<batch> no-op jobs) with two calls in flight while one Worker (concurrency
// <concurrency>, a no-op processor) drains the queue; time from the first add to the last
// 'completed' event. latency: one add() every 1/<rate> s for <seconds> s, each job's data
// stamped with its send time; latency = processor start − send time.
// Node resolves `bullmq` next to the script: bench/jobs.sh copies it into the directory where
// bullmq is installed (outside the repository) and runs it there.
// Everything under <prefix> is obliterated at the end.
import { Queue, Worker } from "bullmq";

const [mode, host, port, prefix, a, b, c] = process.argv.slice(2);
const connection = { host, port: Number(port), maxRetriesPerRequest: null };
const name = "bench";
const nowUs = () => Number(process.hrtime.bigint() / 1000n) + epochOffsetUs;
// hrtime is monotonic; anchor it to the wall clock once so both sides share one clock.
const epochOffsetUs = Date.now() * 1000 - Number(process.hrtime.bigint() / 1000n);

const queue = new Queue(name, { connection, prefix });
const latencies = [];
let completed = 0;
let failed = 0;
let onDone = () => {};
let target = Infinity;
const recording = mode === "latency";
const worker = new Worker(
  name,
  async (job) => {
    if (recording) latencies.push((nowUs() - job.data.t) / 1000);
    return null;
  },
  { connection, prefix, concurrency: Number(c), autorun: true },
);
worker.on("completed", () => {
  completed += 1;
  if (completed >= target) onDone();
});
worker.on("failed", () => {
  failed += 1;
});
await worker.waitUntilReady();

const allDone = () =>
  new Promise((resolve) => {
    onDone = resolve;
    if (completed >= target) resolve();
  });

let jobs = 0;
let errors = 0;
const start = process.hrtime.bigint();
let enqueueSeconds = 0;
if (mode === "throughput") {
  const total = Number(a);
  const batch = Number(b);
  target = total;
  let next = 0;
  const adder = async () => {
    for (;;) {
      const from = next;
      if (from >= total) return;
      next += batch;
      const n = Math.min(batch, total - from);
      const bulk = Array.from({ length: n }, () => ({ name: "noop", data: {} }));
      try {
        await queue.addBulk(bulk);
        jobs += n;
      } catch (e) {
        errors += 1;
        console.error(`addBulk failed: ${e}`);
      }
    }
  };
  await Promise.all([adder(), adder()]);
  enqueueSeconds = Number(process.hrtime.bigint() - start) / 1e9;
  target = jobs;
} else if (mode === "latency") {
  const rate = Number(a);
  const seconds = Number(b);
  const total = rate * seconds;
  const pending = [];
  const t0 = Date.now();
  for (let i = 0; i < total; i++) {
    // The i-th job is due at t0 + i/rate; sleep until then (bursting when behind).
    const due = t0 + (i * 1000) / rate;
    const wait = due - Date.now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    pending.push(
      queue.add("noop", { t: nowUs() }).then(
        () => {
          jobs += 1;
        },
        () => {
          errors += 1;
        },
      ),
    );
  }
  await Promise.all(pending);
  enqueueSeconds = Number(process.hrtime.bigint() - start) / 1e9;
  target = jobs;
} else {
  console.error(`unknown mode ${mode}`);
  process.exit(2);
}
await allDone();
const seconds = Number(process.hrtime.bigint() - start) / 1e9;
await worker.close();
await queue.obliterate({ force: true });
await queue.close();
latencies.sort((x, y) => x - y);
const pct = (p) =>
  latencies.length === 0
    ? 0
    : latencies[Math.min(latencies.length - 1, Math.round((p / 100) * (latencies.length - 1)))];
console.log(
  JSON.stringify({
    mode,
    jobs,
    seconds,
    jobs_per_s: jobs / seconds,
    enqueue_per_s: jobs / enqueueSeconds,
    errors: errors + failed,
    p50_ms: pct(50),
    p90_ms: pct(90),
    p99_ms: pct(99),
    max_ms: pct(100),
  }),
);
