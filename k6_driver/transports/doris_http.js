// Doris' FE HTTP SQL API: POST `{"stmt": sql}` to `/api/query/default_cluster/<database>`
// with basic auth. The FE answers HTTP 200 with a JSON envelope whose `code` 0 means success;
// anything else carries the error text in `data` (or `msg`).
//
// `X-Doris-Stream: false` asks recent FEs for that documented envelope instead of their
// streaming answer; older FEs ignore it and always send the envelope.
//
// Limitations: the FE runs each statement through a small pool of its own MySQL connections
// (Doris documents the API for maintenance, not for heavy query loads), so at high
// concurrency this measures that pool as much as the cluster; the wire protocol (`sql`
// transport) does not have that bottleneck. The FE returns at most its row limit (1000 by
// default) and stops reading there, so a query with more rows is timed to that limit.
// Tested against a stand-in that answers as the documentation says, not against a real FE.

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
    "X-Doris-Stream": "false",
  };
  const body = (sql) => ({ stmt: sql });
  return jsonPostExecutor(transport.url, headers, transport.timeout_ms, body, dorisFailure);
}

function dorisFailure(response) {
  if (response.status === 0) {
    return networkFailure(response);
  }
  let answer = null;
  try {
    answer = JSON.parse(response.body);
  } catch (error) {
    answer = null;
  }
  if (response.status === 200 && answer !== null && answer.code === 0) {
    return null;
  }
  if (answer === null || typeof answer !== "object") {
    const detail = response.body ? `: ${shortened(response.body)}` : "";
    return { kind: "other", error: `HTTP ${response.status}${detail}` };
  }
  const message = typeof answer.data === "string" && answer.data ? answer.data : answer.msg;
  const code = answer.code === undefined ? `HTTP ${response.status}` : `code ${answer.code}`;
  const error = shortened(`${code}: ${message || "no message"}`);
  return { kind: timeoutWords(String(message)) ? "timeout" : "other", error };
}
