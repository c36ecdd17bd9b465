// Crucible's k6 driver: runs an already-parsed workload against ClickHouse's HTTP interface.
//
// Everything it needs comes from the JSON file named by CRUCIBLE_K6_INPUT, written by
// crucible_dagster/engine/k6.py: the queries (name, SQL text to send, weight), the transport
// (base URL, database, user) and the k6 options (load shape and the per-query thresholds that
// make k6 export per-query submetrics). The password comes only from CRUCIBLE_K6_PASSWORD.
// The SQL is sent as written; this script never parses it.

import http from "k6/http";
import encoding from "k6/encoding";
import { Counter } from "k6/metrics";

const INPUT_VERSION = 1;

const input = JSON.parse(open(__ENV.CRUCIBLE_K6_INPUT));
if (input.version !== INPUT_VERSION) {
  throw new Error(`input version ${input.version}, this driver reads ${INPUT_VERSION}`);
}

export const options = input.options;

const errors = new Counter("crucible_errors");
const queries = input.queries;
const transport = input.transport;

// Cumulative weights, so a pick is one random number and a short scan.
const cumulative = [];
let total = 0;
for (const query of queries) {
  total += query.weight;
  cumulative.push(total);
}

const url = `${transport.url}?database=${encodeURIComponent(transport.database)}`;
// Basic auth in a header, never in the URL: k6 tags and logs request URLs.
const credentials = encoding.b64encode(`${transport.user}:${__ENV.CRUCIBLE_K6_PASSWORD || ""}`);
const headers = { Authorization: `Basic ${credentials}`, "Content-Type": "text/plain" };

function pick() {
  const point = Math.random() * total;
  for (let index = 0; index < cumulative.length; index++) {
    if (point < cumulative[index]) {
      return queries[index];
    }
  }
  return queries[queries.length - 1];
}

export default function () {
  const query = pick();
  const tags = { query: query.name };
  // Rows are read and dropped: only timing and status matter here.
  const response = http.post(url, query.sql, { headers, tags, responseType: "none" });
  // Limitation: ClickHouse can append an exception to a body that started with 200 OK; such an
  // execution counts as a success here because the body is not read.
  errors.add(response.status === 200 ? 0 : 1, tags);
}
