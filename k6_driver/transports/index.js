// Transports: how the driver sends one query's SQL to the SUT and times it.
//
// `connectTransport(transport, password)` is called once per virtual user, in k6's init
// context, with the `transport` object of the input file; it returns `{ execute(sql, tags) }`.
// `execute` sends the SQL, reads the answer to its end and returns
//   { ok: boolean, ms: number, kind: string | null, error: string | null }
// where `ms` is the service time in milliseconds (send to last row), `kind` classifies a
// failure ("timeout", "connection", "other" or a two-character SQLSTATE class) and `error` is
// the server's message. `tags` go on every request k6 makes, so its own metrics split by query.
//
// The transport objects are written by crucible_dagster/k6/transports.py (`transport_for`).
// The HTTP kinds run on a stock k6. The `sql` kind needs a k6 built with xk6-sql, so sql.js is
// required only when a transport asks for it: a static import would still be fine today (it
// requires its modules lazily too), but this keeps index.js loadable whatever sql.js becomes.

import { connect as clickhouseHttp } from "./clickhouse_http.js";
import { connect as dorisHttp } from "./doris_http.js";
import { connect as starrocksHttp } from "./starrocks_http.js";
import { connect as trinoHttp } from "./trino_http.js";

const HTTP_TRANSPORTS = {
  clickhouse_http: clickhouseHttp,
  doris_http: dorisHttp,
  starrocks_http: starrocksHttp,
  trino_http: trinoHttp,
};

export function connectTransport(transport, password) {
  if (transport.kind === "sql") {
    return require("./sql.js").connect(transport, password);
  }
  const connect = HTTP_TRANSPORTS[transport.kind];
  if (connect === undefined) {
    const known = [...Object.keys(HTTP_TRANSPORTS), "sql"].join(", ");
    throw new Error(`unknown transport ${JSON.stringify(transport.kind)}; known: ${known}`);
  }
  return connect(transport, password);
}
