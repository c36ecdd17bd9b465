// ClickHouse's HTTP interface: POST the SQL to `url`, database and credentials alongside.

import http from "k6/http";
import encoding from "k6/encoding";

export function connect(transport, password) {
  const url = `${transport.url}?database=${encodeURIComponent(transport.database)}`;
  // Basic auth in a header, never in the URL: k6 tags and logs request URLs.
  const credentials = encoding.b64encode(`${transport.user}:${password}`);
  const headers = { Authorization: `Basic ${credentials}`, "Content-Type": "text/plain" };
  const timeout = `${transport.timeout_ms}ms`;
  return {
    execute(sql, tags) {
      // Rows are read and dropped: only timing and status matter here.
      const response = http.post(url, sql, { headers, tags, timeout, responseType: "none" });
      const ms = response.timings.duration;
      if (response.status === 200) {
        // Limitation: ClickHouse can append an exception to a body that started with 200 OK;
        // such an execution counts as a success because the body is not kept.
        return { ok: true, ms, kind: null, error: null };
      }
      return { ok: false, ms, ...failure(response) };
    },
  };
}

function failure(response) {
  if (response.status === 0) {
    // k6's error codes: 1050 is a request timeout; the 1xxx range is the network.
    const kind = response.error_code === 1050 ? "timeout" : "connection";
    return { kind, error: response.error || `k6 error code ${response.error_code}` };
  }
  // The body is not kept (responseType "none"), so the error is told by ClickHouse's header.
  // Kinds are ClickHouse's exception codes, as the native engine reports them; 159 is
  // TIMEOUT_EXCEEDED.
  const code = response.headers["X-Clickhouse-Exception-Code"];
  const detail = code ? `ClickHouse exception code ${code}` : "no exception code sent";
  const kind = code === "159" ? "timeout" : code || "other";
  return { kind, error: `HTTP ${response.status}: ${detail}` };
}
