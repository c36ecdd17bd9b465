// StarRocks' HTTP SQL API (3.2 and later): POST `{"query": sql, "sessionVariables": {...}}`
// to `/api/v1/catalogs/<catalog>/databases/<database>/sql` with basic auth. The answer is
// newline-delimited JSON: `connectionId`, `meta`, one `data` object per row, `statistics`.
// An error before any data is `{"status": "FAILED", "msg": ...}`; an error after data started
// only closes the connection, so a result with `meta` and no `statistics` is counted as failed.
//
// Limitations: the API runs only SELECT, SHOW, EXPLAIN and KILL statements; other statements
// fail with the server's message (the `sql` transport runs any statement). The whole answer is
// held in memory until it is checked. Tested against a stand-in that answers as the
// documentation says, not against a real StarRocks FE.

import {
  basicAuthorization,
  jsonPostExecutor,
  networkFailure,
  shortened,
  timeoutWords,
} from "./http_common.js";

export function connect(transport, password) {
  const headers = {
    Authorization: basicAuthorization(transport.user, password),
    "Content-Type": "application/json",
  };
  const session = transport.session || {};
  const body = (sql) => ({ query: sql, sessionVariables: session });
  return jsonPostExecutor(transport.url, headers, transport.timeout_ms, body, starrocksFailure);
}

function starrocksFailure(response) {
  if (response.status === 0) {
    return networkFailure(response);
  }
  const lines = (response.body || "").split("\n").filter((line) => line.trim() !== "");
  if (response.status !== 200) {
    const failed = parsed(lines[0]);
    const message = failed && failed.msg ? failed.msg : shortened(response.body || "no message");
    return classified(`HTTP ${response.status}: ${message}`);
  }
  let sawMeta = false;
  let sawStatistics = false;
  for (let index = 0; index < lines.length; index++) {
    const line = lines[index];
    // Rows are not parsed: only the last line can be cut off, and it is parsed below.
    if (line.startsWith('{"data"') && index < lines.length - 1) {
      continue;
    }
    const object = parsed(line);
    if (object === null) {
      return { kind: "other", error: "the answer broke off: the server stopped sending rows" };
    }
    if (object.status === "FAILED") {
      return classified(object.msg || "FAILED without a message");
    }
    sawMeta = sawMeta || object.meta !== undefined;
    sawStatistics = sawStatistics || object.statistics !== undefined;
  }
  if (sawMeta && !sawStatistics) {
    return { kind: "other", error: "the answer ended before its statistics: rows were cut off" };
  }
  return null;
}

function parsed(line) {
  if (line === undefined) {
    return null;
  }
  try {
    const value = JSON.parse(line);
    return value !== null && typeof value === "object" ? value : null;
  } catch (error) {
    return null;
  }
}

function classified(message) {
  return { kind: timeoutWords(message) ? "timeout" : "other", error: shortened(message) };
}
