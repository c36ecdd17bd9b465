// Wire protocols through xk6-sql (`k6/x/sql` with a driver module such as
// `k6/x/sql/driver/postgres` or `k6/x/sql/driver/mysql`), for a k6 built by
// k6_driver/Dockerfile.
//
// The modules are loaded with `require` inside `connect`, in the init context, so a stock k6
// without xk6-sql can still load the driver script and run the HTTP transports; only a run that
// asks for this transport fails, with a message that says what is missing.
//
// The DSN comes from Python without the password: it holds the marker `{password}` once, which
// is replaced here by the password quoted as the driver's DSN syntax wants
// (`password_quoting`). Each virtual user opens its own pool of one connection, like one
// session of the native engine.
//
// Timing: k6 1.1 has no `performance.now()` in its JavaScript runtime, so `ms` is measured
// with `Date.now()`, to the millisecond: a query faster than 1 ms reads as 0 or 1 ms.
// Limitations: xk6-sql reads every row into JavaScript objects before it returns, so `ms`
// includes that client work; it emits no metrics and takes no tags (the driver script tags its
// own metrics by query); an error raised while rows are being read after the first one is not
// reported by xk6-sql 1.0.5, so such an execution counts as a success. PostgreSQL errors from
// lib/pq carry no SQLSTATE in their text, so they are classed by their words or as "other".

const QUOTING = {
  // libpq's key=value syntax: single quotes, backslash before a quote or a backslash.
  libpq: (password) => `'${password.replace(/\\/g, "\\\\").replace(/'/g, "\\'")}'`,
  // go-sql-driver/mysql splits `user:password@` at the last '@', so the text goes as it is.
  none: (password) => password,
};

const POOL = { max_open_conns: 1, max_idle_conns: 1 };

export function connect(transport, password) {
  const sql = load("k6/x/sql", transport);
  const driverModule = load(`k6/x/sql/driver/${transport.driver}`, transport);
  // `require` gives a driver's Symbol wrapped in an object, or an object whose `default` it is.
  const driver = driverModule.default !== undefined ? driverModule.default : driverModule;
  const quote = QUOTING[transport.password_quoting];
  if (quote === undefined) {
    throw new Error(`unknown password_quoting ${JSON.stringify(transport.password_quoting)}`);
  }
  // A function as replacement, so `$` in a password is not a replacement pattern.
  const dsn = transport.dsn.replace("{password}", () => quote(password || ""));
  let db;
  try {
    db = sql.open(driver, dsn, POOL);
  } catch (error) {
    throw new Error(`cannot open the ${transport.driver} driver: ${scrubbed(error, password)}`);
  }
  const timeout = `${transport.timeout_ms}ms`;
  return {
    execute(text, _tags) {
      const started = Date.now();
      try {
        db.queryWithTimeout(timeout, text);
        return { ok: true, ms: Date.now() - started, kind: null, error: null };
      } catch (error) {
        const ms = Date.now() - started;
        const message = scrubbed(error, password);
        return { ok: false, ms, kind: errorKind(message), error: message };
      }
    },
  };
}

function load(name, transport) {
  try {
    return require(name);
  } catch (error) {
    throw new Error(
      `the sql transport needs a k6 built with xk6-sql and its ${transport.driver} driver ` +
        `(see k6_driver/Dockerfile), but this k6 has no module ${name}: set ` +
        "CRUCIBLE_K6_BINARY to such a k6 or use executor: native",
    );
  }
}

// Drivers rarely echo a DSN, but a password must never reach a result line.
function scrubbed(error, password) {
  let message = error && error.message ? String(error.message) : String(error);
  message = message.replace(/^GoError: /, "");
  if (password) {
    message = message.split(password).join("***");
  }
  return message.length > 500 ? `${message.slice(0, 500)}...` : message;
}

const TIMEOUT_WORDS = new RegExp(
  [
    "context deadline exceeded",
    "canceling statement due to (statement timeout|user request)",
    "maximum statement execution time exceeded",
    "i/o timeout",
  ].join("|"),
  "i",
);
const CONNECTION_WORDS = new RegExp(
  [
    "connection refused",
    "bad connection",
    "invalid connection",
    "broken pipe",
    "connection reset",
    "no such host",
    "network is unreachable",
    "unexpected EOF",
    "^EOF$",
    "server closed",
    "dial tcp",
    "terminating connection",
  ].join("|"),
  "i",
);
// go-sql-driver/mysql writes `Error 1146 (42S02): ...`.
const MYSQL_SQLSTATE = /^Error \d+ \(([0-9A-Z]{5})\)/;

function errorKind(message) {
  if (TIMEOUT_WORDS.test(message)) {
    return "timeout";
  }
  if (CONNECTION_WORDS.test(message)) {
    return "connection";
  }
  const state = MYSQL_SQLSTATE.exec(message);
  return state ? state[1].slice(0, 2) : "other";
}
