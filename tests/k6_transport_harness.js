// A test harness for the k6 driver's transports: it connects the transport named in the JSON
// file HARNESS_INPUT (with the password of HARNESS_PASSWORD), executes each query of the file
// once per iteration and logs every result as one JSON line on the console.
//
// Input: { "transport": {...}, "queries": [{"name": ..., "sql": ...}], "iterations": 1,
//          "options": {...k6 options the transport needs} }

import { connectTransport } from "../k6_driver/transports/index.js";

const input = JSON.parse(open(__ENV.HARNESS_INPUT));

export const options = Object.assign({ vus: 1, iterations: input.iterations || 1 }, input.options);

const transport = connectTransport(input.transport, __ENV.HARNESS_PASSWORD || "");

export default function () {
  for (const query of input.queries) {
    const result = transport.execute(query.sql, { query: query.name });
    console.log(JSON.stringify({ name: query.name, ...result }));
  }
}
