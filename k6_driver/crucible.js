// Crucible's k6 driver: runs a workload Crucible has already parsed against the SUT.
//
// Everything comes from the JSON file named by CRUCIBLE_K6_INPUT, written by
// crucible_dagster/k6/script.py: the queries (SQL segments around parameter slots, weights,
// pools of argument rows already rendered as SQL literals), how to choose them, the transport,
// and the k6 options (one scenario and the per-query submetrics). The password comes only from
// CRUCIBLE_K6_PASSWORD. This script never parses SQL.
//
// Every execution is written to the console output (a pipe Crucible reads) as one line:
//   "<query index> <start, ms since the epoch> <service time, ms>"           on success
//   "<query index> <start> <service time> <error kind>"                     on failure
//   "<query index> <start> <service time> interrupted"                      cut off by a stop
//   "E <query index> <message, base64>"                                     first error per VU
//   "S <ms since the epoch>"                                                when the load starts
// from which Crucible builds the same HDR histograms and per-second series as the native
// engine. k6's own metrics carry the tag `query`, so its summary and remote write split by
// query too.

import exec from "k6/execution";
import encoding from "k6/encoding";
import { Rate } from "k6/metrics";
import { connectTransport } from "./transports/index.js";

const INPUT_VERSION = 2;

const input = JSON.parse(open(__ENV.CRUCIBLE_K6_INPUT));
if (input.version !== INPUT_VERSION) {
  throw new Error(`input version ${input.version}, this driver reads ${INPUT_VERSION}`);
}

export const options = input.options;

const errors = new Rate("crucible_errors");
const queries = input.queries;
const session = connectTransport(input.transport, __ENV.CRUCIBLE_K6_PASSWORD || "");
const reported = new Array(queries.length).fill(false);
// Read at init: k6 does not hand the exported options back to the iterations.
const openModel = input.options.scenarios.crucible.executor.endsWith("arrival-rate");

// k6 has no seed for Math.random, so choices and pool rows come from a seeded generator of our
// own (mulberry32), one stream per virtual user from the run's seed, the shard and the VU's
// number, so a run with the same seed and shape makes the same choices.
function seededRandom(seed) {
  let state = seed >>> 0;
  return function next() {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

let random = null;

function rng() {
  if (random === null) {
    // exec.vu is only known inside an iteration; idInTest is unique across shards.
    const shard = Number(__ENV.CRUCIBLE_K6_SHARD || 0);
    random = seededRandom(input.seed * 1000003 + shard * 65537 + exec.vu.idInTest);
  }
  return random();
}

// Cumulative weights, so a random pick is one random number and a short scan.
const cumulative = [];
let total = 0;
for (const query of queries) {
  total += query.weight;
  cumulative.push(total);
}

function pickByWeight() {
  const point = rng() * total;
  for (let index = 0; index < cumulative.length; index++) {
    if (point < cumulative[index]) {
      return index;
    }
  }
  return queries.length - 1;
}

function nextInSequence() {
  // Closed model: each virtual user walks the sequence from its start; open models: one order
  // across all starts of the scenario.
  const step = openModel ? exec.scenario.iterationInTest : exec.vu.iterationInScenario;
  return input.sequence[step % input.sequence.length];
}

const choose = input.choice === "sequence" ? nextInSequence : pickByWeight;

function sqlOf(query) {
  if (query.slots.length === 0) {
    return query.segments[0];
  }
  const row = query.pool[Math.floor(rng() * query.pool.length)];
  let sql = query.segments[0];
  for (let slot = 0; slot < query.slots.length; slot++) {
    sql += row[query.slots[slot]] + query.segments[slot + 1];
  }
  return sql;
}

export function setup() {
  console.log(`S ${Date.now()}`);
}

export default function () {
  const index = choose();
  const query = queries[index];
  const tags = { query: query.name };
  const sql = sqlOf(query);
  const started = Date.now();
  let outcome;
  try {
    outcome = session.execute(sql, tags);
  } catch (error) {
    // A bug of the driver or a transport counts as a failed execution with its message, rather
    // than as an iteration k6 drops with a log line nobody reads.
    outcome = { ok: false, ms: Date.now() - started, kind: "other", error: `driver: ${error}` };
  }
  if (!outcome.ok && String(outcome.error).includes("context canceled")) {
    // k6 cancelled the request because the run was stopped: interrupted, not an error.
    console.log(`${index} ${started} ${outcome.ms} interrupted`);
    return;
  }
  errors.add(!outcome.ok, tags);
  if (outcome.ok) {
    console.log(`${index} ${started} ${outcome.ms}`);
    return;
  }
  console.log(`${index} ${started} ${outcome.ms} ${outcome.kind || "other"}`);
  if (!reported[index]) {
    reported[index] = true;
    console.log(`E ${index} ${encoding.b64encode(outcome.error || "unknown error")}`);
  }
}

// k6's end-of-test summary goes to a file for Crucible, and, under Dagster Pipes, the run's
// totals go back as a Pipes message (the JavaScript side of the protocol: plain JSON lines).
export function handleSummary(data) {
  const files = {};
  if (__ENV.CRUCIBLE_K6_SUMMARY) {
    files[__ENV.CRUCIBLE_K6_SUMMARY] = JSON.stringify(data);
  }
  if (__ENV.CRUCIBLE_PIPES_MESSAGES) {
    const message = (method, params) =>
      JSON.stringify({ __dagster_pipes_version: "0.1", method, params });
    const metric = (name) => (data.metrics[name] ? data.metrics[name].values : {});
    const payload = {
      shard: Number(__ENV.CRUCIBLE_K6_SHARD || 0),
      iterations: metric("iterations").count || 0,
      dropped_iterations: metric("dropped_iterations").count || 0,
      http_reqs: metric("http_reqs").count || 0,
    };
    files[__ENV.CRUCIBLE_PIPES_MESSAGES] = [
      message("opened", { extras: {} }),
      message("report_custom_message", { payload }),
      message("closed", {}),
      "",
    ].join("\n");
  }
  return files;
}
