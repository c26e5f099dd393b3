//! Secrets never leave the host: distinct random secrets planted in every place HTTP/1,
//! PostgreSQL and Redis traffic carries them, and in the clients' command lines, must appear in none of
//! the agent's outputs at once: the `--print=json` lines (and its log), every span the OTLP
//! receiver got, the viewer's API answers, and the raw bytes of the SQLite store (`-wal` too).
//!
//! The spans the traffic makes must exist (so the test fails for the right reason), a
//! non-secret marker sent next to the secrets must be found in every output (so the search is
//! known to see what is there), and where ztrace keeps a key it shows `REDACTED` as its value.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ztrace_e2e::clients::{self, get_local as get};
use ztrace_e2e::otlp::OtlpReceiver;
use ztrace_e2e::postgres::{self, PgServer, BIN_DIR, USER};
use ztrace_e2e::redis::RedisServer;
use ztrace_e2e::servers::Server;
use ztrace_e2e::ztrace::SPAN_TIMEOUT;
use ztrace_e2e::{free_port, wait_until, Span, TempDir, Ztrace};

/// Export is batched: allow for a few flush intervals.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(45);
/// How long a span may take from the wire to the viewer's API.
const STORE_TIMEOUT: Duration = Duration::from_secs(10);

/// `zt-secret-<16 random hex digits>`, or 13 random digits for a numeric literal.
fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut buf))
        .expect("read /dev/urandom");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// The secrets, each with the place it was planted (for the failure message).
struct Secrets(Vec<(&'static str, String)>);

impl Secrets {
    fn plant(&mut self, place: &'static str) -> String {
        let secret = format!("zt-secret-{}", random_hex(8));
        self.0.push((place, secret.clone()));
        secret
    }

    /// Panics unless `marker` is in `text` (the search sees what is there) and no secret is.
    fn check(&self, what: &str, text: &str, marker: &str) {
        assert!(
            text.contains(marker),
            "the marker {marker} is not in {what}"
        );
        self.assert_absent(what, text);
    }

    fn add(&mut self, place: &'static str, secret: String) {
        self.0.push((place, secret));
    }

    /// Panics naming every secret found in `text`, which `what` describes.
    fn assert_absent(&self, what: &str, text: &str) {
        let found: Vec<String> = self
            .0
            .iter()
            .filter(|(_, s)| text.contains(s.as_str()))
            .map(|(place, s)| {
                let at = text.find(s.as_str()).unwrap_or(0);
                let around =
                    &text.as_bytes()[at.saturating_sub(200)..(at + s.len() + 200).min(text.len())];
                format!(
                    "{place} ({s}) in: ...{}...",
                    String::from_utf8_lossy(around)
                )
            })
            .collect();
        assert!(
            found.is_empty(),
            "secrets leaked into {what}:\n{}",
            found.join("\n")
        );
    }
}

/// Standard base64 (for the `Basic` credentials curl sends).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The bytes of the store's files (`ztrace.db`, `-wal`, `-shm`), lossily as text.
fn store_bytes(dir: &Path) -> String {
    ["ztrace.db", "ztrace.db-wal", "ztrace.db-shm"]
        .iter()
        .filter_map(|f| std::fs::read(dir.join(f)).ok())
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

/// `psql -X -v ON_ERROR_STOP=1 -h 127.0.0.1 -U user -f file` with `PGPASSWORD` in its
/// environment (never on its command line); panics unless it succeeds.
fn psql_file(pg: &PgServer, user: &str, password: Option<&str>, file: &Path) {
    let mut cmd = Command::new(Path::new(BIN_DIR).join("psql"));
    cmd.args([
        "-X",
        "-v",
        "ON_ERROR_STOP=1",
        "-h",
        "127.0.0.1",
        "-p",
        &pg.port.to_string(),
    ])
    .args(["-U", user, "-d", "postgres", "-f"])
    .arg(file)
    .env_remove("PGPASSWORD");
    if let Some(password) = password {
        cmd.env("PGPASSWORD", password);
    }
    let run = postgres::run("psql", &mut cmd);
    assert!(
        run.success,
        "psql as {user} failed:\n{}\n{}",
        run.stdout, run.stderr
    );
}

fn text_of(spans: &[Span]) -> String {
    spans
        .iter()
        .map(|s| s.0.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
#[ignore = "needs root and eBPF; run by cargo xtask test"]
fn no_planted_secret_reaches_any_output() {
    let mut secrets = Secrets(Vec::new());
    // A non-secret value sent next to the secrets: it must show up everywhere.
    let marker = format!("zt-visible-{}", random_hex(8));
    let files = TempDir::new("secrets");

    // PostgreSQL with password logins: cleartext `password` for one role, SCRAM for another,
    // trust for the superuser that creates them.
    let hba = files.join("pg_hba.conf");
    std::fs::write(
        &hba,
        "host all zt_clear 127.0.0.1/32 password\n\
         host all zt_scram 127.0.0.1/32 scram-sha-256\n\
         host all all 127.0.0.1/32 trust\n\
         local all all trust\n",
    )
    .expect("write pg_hba.conf");
    PgServer::chown_to_postgres(files.path());
    PgServer::chown_to_postgres(&hba);
    let hba_setting = format!("hba_file={}", hba.display());
    let pg = PgServer::start_with(&[&hba_setting, "password_encryption=scram-sha-256"]);

    let server = Server::fixture("127.0.0.1");
    let mut receiver = OtlpReceiver::start();
    let data = TempDir::new("secrets-data");
    let ui = free_port();
    let (ui_addr, endpoint) = (format!("127.0.0.1:{ui}"), receiver.grpc_endpoint());
    let data_dir = data.path().display().to_string();
    let mut ztrace = Ztrace::start(&[
        "--print=json",
        "--otlp-endpoint",
        &endpoint,
        "--ui",
        &ui_addr,
        "--data-dir",
        &data_dir,
    ]);

    // HTTP/1: secrets in the query (the URL is on curl's command line too), in headers, in the
    // URL's user-info (sent as `Authorization: Basic`), in a JSON body and in a Set-Cookie.
    let token = secrets.plant("?token=");
    let bearer = secrets.plant("Authorization: Bearer");
    let run = clients::curl_with(
        &[server.url(&format!("/items/1?token={token}&page={marker}"))],
        &["-H", &format!("Authorization: Bearer {bearer}")],
    );
    assert_eq!(run.transfers[0].0, 200);

    let query_keys = ["password", "api_key", "key", "secret", "access_token"];
    let query: Vec<String> = query_keys
        .iter()
        .map(|k| format!("{k}={}", secrets.plant("a sensitive query key")))
        .collect();
    let cookie = secrets.plant("Cookie");
    let api_key = secrets.plant("X-Api-Key");
    let run = clients::curl_with(
        &[server.url(&format!("/ok?{}", query.join("&")))],
        &[
            "-H",
            &format!("Cookie: session={cookie}"),
            "-H",
            &format!("X-Api-Key: {api_key}"),
        ],
    );
    assert_eq!(run.transfers[0].0, 200);

    let userinfo = secrets.plant("URL user-info password");
    secrets.add(
        "Authorization: Basic",
        base64(format!("zuser:{userinfo}").as_bytes()),
    );
    let url =
        server
            .url("/status/204")
            .replacen("http://", &format!("http://zuser:{userinfo}@"), 1);
    let run = clients::curl(&[url]);
    assert_eq!(run.transfers[0].0, 204);

    let body_password = secrets.plant("JSON body password");
    let session = secrets.plant("JSON body session");
    secrets.add("Set-Cookie", session.chars().rev().collect());
    let body = files.join("login.json");
    std::fs::write(
        &body,
        format!(r#"{{"user":"zuser","password":"{body_password}","session":"{session}"}}"#),
    )
    .expect("write the body");
    let run = clients::curl_with(
        &[server.url("/login")],
        &[
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &format!("@{}", body.display()),
        ],
    );
    assert_eq!(run.transfers[0].0, 200);

    // PostgreSQL: passwords in CREATE/ALTER ROLE, string and numeric literals, logins with a
    // password (cleartext and SCRAM), and a bind parameter.
    let (clear_pw, scram_pw) = (
        secrets.plant("CREATE ROLE ... PASSWORD"),
        secrets.plant("ALTER USER ... PASSWORD"),
    );
    let first_pw = secrets.plant("CREATE ROLE ... PASSWORD (replaced)");
    let literal = secrets.plant("string literal");
    let number = format!(
        "7{}",
        u64::from_str_radix(&random_hex(5), 16).expect("hex") % 1_000_000_000_000
    );
    secrets.add("numeric literal", number.clone());
    let setup = files.join("setup.sql");
    std::fs::write(
        &setup,
        format!(
            "CREATE ROLE zt_clear LOGIN PASSWORD '{clear_pw}';\n\
             CREATE ROLE zt_scram LOGIN PASSWORD '{first_pw}';\n\
             ALTER USER zt_scram PASSWORD '{scram_pw}';\n\
             SELECT '{literal}' AS s, {number} AS n;\n"
        ),
    )
    .expect("write setup.sql");
    psql_file(&pg, USER, None, &setup);
    let clear_literal = secrets.plant("literal over a cleartext-password login");
    let clear_sql = files.join("clear.sql");
    std::fs::write(
        &clear_sql,
        format!("SELECT length('{clear_literal}') AS zt_clear_len;\n"),
    )
    .expect("write");
    psql_file(&pg, "zt_clear", Some(&clear_pw), &clear_sql);
    let scram_sql = files.join("scram.sql");
    std::fs::write(&scram_sql, "SELECT current_user AS zt_scram_user;\n").expect("write");
    psql_file(&pg, "zt_scram", Some(&scram_pw), &scram_sql);

    // A bind parameter: pgbench's extended protocol sends `:pw` as `$1` (and `-D pw=...` is a
    // secret on its command line).
    let bound = secrets.plant("bind parameter");
    let script = files.join("bind.sql");
    std::fs::write(&script, "SELECT length(:pw::text) AS zt_bound_len;\n").expect("write bind.sql");
    let mut pgbench = Command::new(Path::new(BIN_DIR).join("pgbench"));
    pgbench
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &pg.port.to_string(),
            "-U",
            USER,
            "-n",
            "-M",
            "extended",
            "-t",
            "1",
        ])
        .arg("-f")
        .arg(&script)
        .args(["-D", &format!("pw={bound}"), "postgres"]);
    let run = postgres::run("pgbench", &mut pgbench);
    assert!(
        run.success,
        "pgbench failed:\n{}\n{}",
        run.stdout, run.stderr
    );

    // Redis: a `requirepass` server; redis-cli sends `AUTH password` first (its `--pass` is on
    // its command line too), then a SET whose value is a secret (read from stdin with `-x`: the
    // arguments of redis-cli's command on its command line are kept as they are) and a GET of
    // the marker's key.
    let redis_pw = secrets.plant("Redis AUTH password");
    let redis = RedisServer::start(Some(&redis_pw));
    let value = secrets.plant("Redis SET value");
    let value_file = files.join("redis-value");
    std::fs::write(&value_file, &value).expect("write the value");
    let status = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &redis.port.to_string()])
        .args(["--no-auth-warning", "--pass", &redis_pw, "-x", "SET"])
        .arg(format!("zt:{marker}"))
        .stdin(std::fs::File::open(&value_file).expect("open the value"))
        .stdout(std::process::Stdio::null())
        .status()
        .expect("redis-cli");
    assert!(status.success(), "redis-cli -x SET: {status}");
    let run = redis.cli(&["GET", &format!("zt:{marker}")]);
    assert!(
        run.success && run.stdout.contains(&value),
        "redis-cli GET: {}\n{}",
        run.stdout,
        run.stderr
    );
    let redis_port = redis.port;
    // Each redis-cli run authenticates: AUTH, SET, AUTH, GET.
    let redis_texts = [
        "AUTH".to_owned(),
        format!("SET zt:{marker} ?"),
        format!("GET zt:{marker}"),
    ];
    let redis_spans = ztrace.wait_for_n_spans(
        4,
        |s| {
            s.is_server()
                && s.server_port() == Some(redis_port)
                && s.attr_str("db.query.text")
                    .is_some_and(|t| redis_texts.iter().any(|e| e == t))
        },
        SPAN_TIMEOUT,
    );
    for text in &redis_texts {
        assert!(
            redis_spans
                .iter()
                .any(|s| s.attr_str("db.query.text") == Some(text.as_str())),
            "no Redis server span `{text}`: {redis_spans:#?}"
        );
    }

    // The spans exist: a server span per HTTP request, with the redacted query as ztrace keeps it.
    let port = server.port;
    let http = ztrace.wait_for_n_spans(
        4,
        |s| s.is_server() && s.server_port() == Some(port),
        SPAN_TIMEOUT,
    );
    let server_span = |path: &str| -> &Span {
        http.iter()
            .find(|s| s.is_server() && s.url_path() == Some(path))
            .unwrap_or_else(|| panic!("no server span for {path}: {http:#?}"))
    };
    assert_eq!(
        server_span("/items/1").attr_str("url.query"),
        Some(format!("token=REDACTED&page={marker}").as_str())
    );
    let redacted: Vec<String> = query_keys.iter().map(|k| format!("{k}=REDACTED")).collect();
    assert_eq!(
        server_span("/ok").attr_str("url.query"),
        Some(redacted.join("&").as_str())
    );
    assert_eq!(
        server_span("/status/204").attr_i64("http.response.status_code"),
        Some(204)
    );
    assert_eq!(
        server_span("/login").attr_str("http.request.method"),
        Some("POST")
    );
    let client = ztrace.wait_for_spans(
        |s| s.is_client() && s.server_port() == Some(port) && s.url_path() == Some("/items/1"),
        SPAN_TIMEOUT,
    );
    assert_eq!(
        client[0].attr_str("url.full"),
        Some(format!("http://127.0.0.1:{port}/items/1?token=REDACTED&page={marker}").as_str())
    );
    // curl's command line, when read before curl exited, keeps its URL with the query redacted.
    if let Some(cmdline) = client[0]
        .resource_str("process.command_line")
        .filter(|c| !c.is_empty())
    {
        assert!(
            cmdline.contains("token=REDACTED"),
            "process.command_line: {cmdline}"
        );
    }

    // PostgreSQL: the statements as psql sent them (with their `;`), literals as `?`, no bind value.
    let pg_port = pg.port;
    let texts = [
        "CREATE ROLE zt_clear LOGIN PASSWORD ?;",
        "ALTER USER zt_scram PASSWORD ?;",
        "SELECT ? AS s, ? AS n;",
        "SELECT length(?) AS zt_clear_len;",
        "SELECT current_user AS zt_scram_user;",
        "SELECT length($1::text) AS zt_bound_len;",
    ];
    let pg_spans = ztrace.wait_for_n_spans(
        texts.len(),
        |s| {
            s.is_server()
                && s.server_port() == Some(pg_port)
                && s.attr_str("db.query.text")
                    .is_some_and(|t| texts.contains(&t))
        },
        SPAN_TIMEOUT,
    );
    for text in texts {
        let span = pg_spans
            .iter()
            .find(|s| s.attr_str("db.query.text") == Some(text))
            .unwrap_or_else(|| panic!("no PostgreSQL server span for {text}: {pg_spans:#?}"));
        assert!(
            span.attr("db.query.parameter.0").is_none(),
            "a bind value is kept: {span:?}"
        );
    }

    // (c) The viewer's API: the list and every trace of these spans.
    let trace_ids: Vec<String> = http
        .iter()
        .chain(&client)
        .chain(&pg_spans)
        .chain(&redis_spans)
        .filter_map(|s| s.trace_id().map(str::to_owned))
        .collect();
    let mut api = String::new();
    for id in &trace_ids {
        let trace = wait_until(STORE_TIMEOUT, || {
            let (status, body) = get(ui, &format!("/api/traces/{id}"));
            (status == 200).then_some(body)
        })
        .unwrap_or_else(|| panic!("trace {id} not served by the viewer within {STORE_TIMEOUT:?}"));
        let listed = get(ui, &format!("/api/traces?trace_id={id}")).1;
        assert!(
            listed.contains(id.as_str()),
            "trace {id} not listed: {listed}"
        );
        api.push_str(&trace);
        api.push_str(&listed);
    }
    api.push_str(&get(ui, "/api/traces?limit=1000").1);
    secrets.check("the viewer's API answers", &api, &marker);

    // (d) The store's file bytes, while the agent runs (the WAL holds the newest pages).
    let stored = store_bytes(data.path());
    secrets.check("the store's files (running)", &stored, &marker);

    // (b) Every span the OTLP receiver got.
    let exported = receiver.wait_for_spans(
        4,
        |s| {
            s.kind() == Some("SPAN_KIND_SERVER")
                && s.attr_i64("server.port") == Some(i64::from(port))
        },
        EXPORT_TIMEOUT,
    );
    wait_until(EXPORT_TIMEOUT, || {
        receiver
            .spans()
            .iter()
            .any(|s| {
                s.attr_str("db.query.text") == Some("SELECT length($1::text) AS zt_bound_len;")
            })
            .then_some(())
    })
    .expect("the PostgreSQL spans reach the OTLP receiver");
    assert_eq!(exported.len(), 4, "{exported:#?}");

    // (a) Everything printed, stdout and log, over the whole run; then (b) and (d) again.
    let stopped = ztrace.stop();
    let printed = text_of(&stopped.spans);
    secrets.check("the printed spans", &printed, &marker);
    secrets.assert_absent("the agent's log", &stopped.stderr);
    let otlp: String = receiver
        .spans()
        .iter()
        .map(|s| s.0.to_string())
        .collect::<Vec<_>>()
        .join("\n");
    secrets.check("the spans exported over OTLP", &otlp, &marker);
    let stored = store_bytes(data.path());
    secrets.check("the store's files (stopped)", &stored, &marker);
}
