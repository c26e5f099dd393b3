//! Command lines: splitting `/proc/PID/cmdline`, redacting secrets, and naming the program that
//! an interpreter or VM runs (`python3 -u app.py` → `app`, `java -jar orders-1.2.jar` → `orders`).
//!
//! Pure functions over bytes and strings; nothing here reads `/proc`. Redaction is a best effort
//! on common shapes (`--password=x`, `--token x`, `PGPASSWORD=x`, `-Dfoo.secret=x`,
//! `scheme://user:pass@host`, `Authorization: Bearer x`); it deliberately keeps ambiguous short
//! flags (`-p secret` may be a port) and does not try to recognize bare secret values.

/// What replaces a secret value.
pub const REDACTED: &str = "REDACTED";

/// Longest `process.command_line` kept, in bytes (cut at a character boundary).
pub const MAX_COMMAND_LINE: usize = 4096;

/// Longest service name derived from a command line, in bytes.
const MAX_NAME: usize = 255;

/// Splits the NUL-separated bytes of `/proc/PID/cmdline` into arguments.
///
/// Invalid UTF-8 is replaced (lossy); a trailing NUL does not make an empty last argument. A
/// process that rewrote its title (`nginx: worker process`) yields one argument with spaces.
pub fn split_cmdline(bytes: &[u8]) -> Vec<String> {
    let bytes = bytes.strip_suffix(&[0]).unwrap_or(bytes);
    if bytes.is_empty() {
        return Vec::new();
    }
    bytes.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect()
}

/// The arguments with secret values replaced by [`REDACTED`].
///
/// A single argument containing spaces (a rewritten process title) is redacted word by word.
pub fn redact_args(args: &[String]) -> Vec<String> {
    if args.len() == 1 && args[0].contains(' ') {
        let words: Vec<String> = args[0].split(' ').map(str::to_owned).collect();
        return vec![redact_args(&words).join(" ")];
    }
    let mut out = Vec::with_capacity(args.len());
    let mut redact_next = false;
    for arg in args {
        if redact_next && !arg.starts_with('-') {
            out.push(REDACTED.to_owned());
            redact_next = false;
            continue;
        }
        redact_next = false;
        let mut arg = redact_urls(arg);
        let header = arg.find(": ");
        let assignment = arg.find('=');
        if let Some(eq) = assignment.filter(|eq| header.is_none_or(|h| *eq < h)) {
            // `--password=x`, `-token=x`, `PGPASSWORD=x`, `-Dspring.datasource.password=x`.
            if is_secret_key(&arg[..eq]) {
                arg = format!("{}={REDACTED}", &arg[..eq]);
            }
        } else if let Some(colon) = header {
            // A header given as an argument: `curl -H 'Authorization: Bearer x'`.
            let name = &arg[..colon];
            if !name.contains(' ') && is_secret_key(name) {
                arg = format!("{name}: {REDACTED}");
            }
        } else if arg.starts_with('-') && arg.len() > 2 && is_secret_key(&arg) {
            // `--token x`, `-password x`; a lone short flag (`-p x`) is ambiguous and kept.
            redact_next = true;
        }
        out.push(arg);
    }
    out
}

/// Joins arguments with spaces into `process.command_line`, cut to [`MAX_COMMAND_LINE`] bytes.
pub fn join_command_line(args: &[String]) -> String {
    let mut s = args.join(" ");
    if s.len() > MAX_COMMAND_LINE {
        let mut cut = MAX_COMMAND_LINE;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// True when a flag name, variable name or property key names a secret.
///
/// Case-insensitive, ignoring `-`, `_` and `.`; matches `password`, `passwd`, `secret`, `token`,
/// `apikey`, `auth`, `credential`, `privatekey` anywhere in the key, or a key that is exactly
/// `pass` or `pw`. A Java property prefix (`-D`) is ignored.
pub fn is_secret_key(key: &str) -> bool {
    let key = key.trim_start_matches('-');
    let key = key.strip_prefix('D').filter(|k| k.contains('.')).unwrap_or(key);
    let norm: String = key
        .chars()
        .filter(|c| !matches!(c, '-' | '_' | '.'))
        .flat_map(char::to_lowercase)
        .collect();
    const PATTERNS: [&str; 8] =
        ["password", "passwd", "secret", "token", "apikey", "auth", "credential", "privatekey"];
    PATTERNS.iter().any(|p| norm.contains(p)) || norm == "pass" || norm == "pw"
}

/// Replaces the user-info of every `scheme://user:pass@host` in `arg` by `REDACTED:REDACTED@`
/// (or `REDACTED@` when there is no password), as the URL semantic conventions ask.
pub fn redact_urls(arg: &str) -> String {
    if !arg.contains("://") {
        return arg.to_owned();
    }
    let mut out = String::with_capacity(arg.len());
    let mut rest = arg;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let authority_end = tail.find(['/', '?', '#', ' ']).unwrap_or(tail.len());
        let authority = &tail[..authority_end];
        match authority.rfind('@') {
            Some(at) => {
                let userinfo = &authority[..at];
                out.push_str(if userinfo.contains(':') { "REDACTED:REDACTED" } else { REDACTED });
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[authority_end..];
    }
    out.push_str(rest);
    out
}

/// Interpreters and VMs whose program is named by an argument rather than by the executable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runtime {
    Python,
    Node,
    Ruby,
    Perl,
    Php,
    Java,
    Shell,
    Dotnet,
}

impl Runtime {
    /// Recognizes an interpreter from an executable or `argv[0]` basename (`python3.12`, `node`,
    /// `ruby3.2`, `perl5.36`, `php8.2`, `java`, `bash`, `dotnet`, ...).
    pub fn from_name(name: &str) -> Option<Runtime> {
        let base = basename(name);
        // `python3.12`, `php8.2`, `ruby3.2`, `pypy3`: strip a trailing version.
        let stem = base.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.');
        Some(match stem {
            "python" | "pypy" => Runtime::Python,
            "node" | "nodejs" => Runtime::Node,
            "ruby" => Runtime::Ruby,
            "perl" => Runtime::Perl,
            "php" | "php-cli" => Runtime::Php,
            "java" => Runtime::Java,
            "sh" | "bash" | "dash" | "zsh" | "ksh" | "ash" | "mksh" => Runtime::Shell,
            "dotnet" => Runtime::Dotnet,
            _ => return None,
        })
    }
}

/// The name of the program an interpreter or VM runs, from its arguments (`args[0]` is the
/// interpreter itself), or `None` when `exe_name` and `args[0]` are no known interpreter or the
/// arguments name no script (`python -c ...`, `node -e ...`, a REPL, stdin).
///
/// Scripts and jars are named by their file name without extension (`/srv/app.py` → `app`,
/// `orders-service-0.0.1-SNAPSHOT.jar` → `orders-service`), Python modules by their name
/// (`-m uvicorn` → `uvicorn`), Java main classes by their simple name.
pub fn program_name(exe_name: &str, args: &[String]) -> Option<String> {
    // A rewritten title (`gunicorn: master [app:app]`, `npm start`) is one argument with spaces.
    if args.len() == 1 && args[0].contains(' ') && Runtime::from_name(exe_name).is_some() {
        let words: Vec<String> = args[0].split_whitespace().map(str::to_owned).collect();
        let first = words.first()?.trim_end_matches(':');
        if Runtime::from_name(first).is_none() {
            return clean(basename(first));
        }
        return program_name(exe_name, &words);
    }
    let runtime = Runtime::from_name(exe_name).or_else(|| Runtime::from_name(args.first()?))?;
    let rest = args.get(1..)?;
    let name = match runtime {
        Runtime::Python => python(rest),
        Runtime::Node => node(rest),
        Runtime::Ruby => ruby(rest),
        Runtime::Perl => perl(rest),
        Runtime::Php => php(rest),
        Runtime::Java => java(rest),
        Runtime::Shell => shell(rest),
        Runtime::Dotnet => dotnet(rest),
    }?;
    clean(&name)
}

/// Trims a derived name and rejects empty or absurd ones.
fn clean(name: &str) -> Option<String> {
    let name = name.trim();
    if name.is_empty() || name == "-" {
        return None;
    }
    let mut cut = name.len().min(MAX_NAME);
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    Some(name[..cut].to_owned())
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// File name without directory and without one of the given extensions.
fn script_stem(path: &str, exts: &[&str]) -> String {
    let base = basename(path);
    for ext in exts {
        if let Some(stem) = base.strip_suffix(ext) {
            if !stem.is_empty() {
                return stem.to_owned();
            }
        }
    }
    base.to_owned()
}

/// What a short-option cluster (`-uBm`) means for the program name.
enum Cluster {
    /// Plain flags: go on with the next argument.
    Flags,
    /// The last flag takes a value in the next argument: skip it.
    SkipNext,
    /// Code on the command line or stdin: no program name.
    NoProgram,
    /// The flag names the program directly (`-m module`), here or in the next argument.
    Named(Option<String>),
}

/// Walks a short-option cluster: `no_program` flags end the search, `with_value` flags take the
/// rest of the cluster or the next argument, `naming` flags give the program name the same way.
fn cluster(arg: &str, no_program: &str, with_value: &str, naming: &str) -> Cluster {
    let body = &arg[1..];
    for (i, c) in body.char_indices() {
        let rest = &body[i + c.len_utf8()..];
        if no_program.contains(c) {
            return Cluster::NoProgram;
        }
        if naming.contains(c) {
            return Cluster::Named((!rest.is_empty()).then(|| rest.to_owned()));
        }
        if with_value.contains(c) {
            return if rest.is_empty() { Cluster::SkipNext } else { Cluster::Flags };
        }
    }
    Cluster::Flags
}

/// Generic walk over interpreter options: `long_with_value` are `--name value` options.
fn walk(
    args: &[String],
    no_program: &str,
    with_value: &str,
    naming: &str,
    long_with_value: &[&str],
    exts: &[&str],
) -> Option<String> {
    let mut i = 0;
    while let Some(arg) = args.get(i) {
        if arg == "--" {
            return args.get(i + 1).map(|s| script_stem(s, exts));
        }
        if arg == "-" {
            return None;
        }
        if arg.starts_with("--") {
            if long_with_value.contains(&arg.as_str()) {
                i += 1;
            }
            i += 1;
            continue;
        }
        if arg.starts_with('-') {
            match cluster(arg, no_program, with_value, naming) {
                Cluster::Flags => {}
                Cluster::SkipNext => i += 1,
                Cluster::NoProgram => return None,
                Cluster::Named(Some(name)) => return Some(name),
                Cluster::Named(None) => return args.get(i + 1).cloned(),
            }
            i += 1;
            continue;
        }
        return Some(script_stem(arg, exts));
    }
    None
}

fn python(args: &[String]) -> Option<String> {
    walk(args, "c", "WXQ", "m", &["--check-hash-based-pycs"], &[".pyc", ".pyw", ".py"])
}

fn node(args: &[String]) -> Option<String> {
    const LONG: [&str; 12] = [
        "--require",
        "--import",
        "--loader",
        "--experimental-loader",
        "--conditions",
        "--title",
        "--env-file",
        "--input-type",
        "--inspect-port",
        "--redirect-warnings",
        "--disable-warning",
        "--watch-path",
    ];
    for a in args {
        if matches!(a.as_str(), "-e" | "--eval" | "-p" | "--print" | "-i" | "--interactive") {
            return None;
        }
        if !a.starts_with('-') {
            break;
        }
    }
    walk(args, "", "rC", "", &LONG, &[".mjs", ".cjs", ".js", ".mts", ".cts", ".ts"])
}

fn ruby(args: &[String]) -> Option<String> {
    walk(args, "e", "IrCE", "", &[], &[".rb"])
}

fn perl(args: &[String]) -> Option<String> {
    walk(args, "eE", "I", "", &[], &[".pl", ".pm", ".cgi"])
}

fn php(args: &[String]) -> Option<String> {
    walk(args, "ra", "cdztS", "f", &[], &[".php"]).map(|s| script_stem(&s, &[".php"]))
}

fn shell(args: &[String]) -> Option<String> {
    let mut i = 0;
    while let Some(arg) = args.get(i) {
        if arg == "--" {
            return args.get(i + 1).map(|s| script_stem(s, &[".sh", ".bash"]));
        }
        if matches!(arg.as_str(), "--rcfile" | "--init-file") {
            i += 2;
            continue;
        }
        if arg.starts_with("--") {
            i += 1;
            continue;
        }
        if arg.starts_with('-') || arg.starts_with('+') {
            // `-c` runs a string, `-s` and `-i` read stdin; `-o opt`, `+o opt`, `-O opt` take a value.
            let body = &arg[1..];
            if body.contains(['c', 's', 'i']) {
                return None;
            }
            if body.ends_with(['o', 'O']) {
                i += 1;
            }
            i += 1;
            continue;
        }
        return Some(script_stem(arg, &[".sh", ".bash"]));
    }
    None
}

fn java(args: &[String]) -> Option<String> {
    const WITH_VALUE: [&str; 13] = [
        "-cp",
        "-classpath",
        "--class-path",
        "-p",
        "--module-path",
        "--upgrade-module-path",
        "--add-modules",
        "--add-opens",
        "--add-exports",
        "--add-reads",
        "--patch-module",
        "--limit-modules",
        "--enable-native-access",
    ];
    let mut i = 0;
    while let Some(arg) = args.get(i) {
        if arg == "-jar" {
            return args.get(i + 1).map(|jar| jar_name(jar));
        }
        if arg == "-m" || arg == "--module" {
            return args.get(i + 1).map(|m| java_module(m));
        }
        if let Some(m) = arg.strip_prefix("--module=") {
            return Some(java_module(m));
        }
        if WITH_VALUE.contains(&arg.as_str()) {
            i += 2;
            continue;
        }
        if arg.starts_with('-') || arg.starts_with('@') {
            i += 1;
            continue;
        }
        // A main class (`com.example.Main`) or, in source-file mode, a `.java` file.
        if let Some(src) = arg.strip_suffix(".java") {
            return Some(basename(src).to_owned());
        }
        return Some(arg.rsplit('.').next().unwrap_or(arg).to_owned());
    }
    None
}

/// `module/com.example.Main` → `module`.
fn java_module(m: &str) -> String {
    m.split('/').next().unwrap_or(m).to_owned()
}

/// `/app/orders-service-0.0.1-SNAPSHOT.jar` → `orders-service`: no directory, no extension, no
/// trailing version (from the first `-` followed by a digit).
fn jar_name(path: &str) -> String {
    let stem = script_stem(path, &[".jar", ".war"]);
    let bytes = stem.as_bytes();
    for (i, w) in bytes.windows(2).enumerate() {
        if w[0] == b'-' && w[1].is_ascii_digit() && i > 0 {
            return stem[..i].to_owned();
        }
    }
    stem
}

fn dotnet(args: &[String]) -> Option<String> {
    const WITH_VALUE: [&str; 6] = [
        "--additionalprobingpath",
        "--depsfile",
        "--runtimeconfig",
        "--fx-version",
        "--roll-forward",
        "--additional-deps",
    ];
    let mut i = 0;
    while let Some(arg) = args.get(i) {
        if WITH_VALUE.contains(&arg.as_str()) {
            i += 2;
            continue;
        }
        if arg.starts_with('-') || arg == "exec" {
            i += 1;
            continue;
        }
        // `dotnet App.dll`; an SDK command (`dotnet run`) names no program.
        return arg.strip_suffix(".dll").map(|s| basename(s).to_owned());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split(' ').map(str::to_owned).collect()
    }

    #[test]
    fn splits_cmdline_bytes() {
        assert_eq!(split_cmdline(b"python3\0-u\0app.py\0"), args("python3 -u app.py"));
        assert_eq!(split_cmdline(b"nginx: worker process\0"), vec!["nginx: worker process"]);
        assert_eq!(split_cmdline(b"no-trailing-nul"), vec!["no-trailing-nul"]);
        assert_eq!(split_cmdline(b"a\0\0b\0"), vec!["a", "", "b"]);
        assert!(split_cmdline(b"").is_empty());
        assert!(split_cmdline(b"\0").is_empty());
        assert_eq!(split_cmdline(b"x\xff\0"), vec!["x\u{fffd}"]);
    }

    #[test]
    fn redacts_secrets() {
        let cases = [
            ("app --password=hunter2 --port=80", "app --password=REDACTED --port=80"),
            ("app --token abc --verbose", "app --token REDACTED --verbose"),
            ("app --api-key abc", "app --api-key REDACTED"),
            ("app --API_KEY=abc", "app --API_KEY=REDACTED"),
            ("app -password abc", "app -password REDACTED"),
            ("app --client-secret=s3", "app --client-secret=REDACTED"),
            ("app --private_key=k", "app --private_key=REDACTED"),
            ("app --db-credentials /etc/c", "app --db-credentials REDACTED"),
            ("app --auth-token=t", "app --auth-token=REDACTED"),
            ("env PGPASSWORD=pw psql", "env PGPASSWORD=REDACTED psql"),
            (
                "java -Dspring.datasource.password=pw -jar a.jar",
                "java -Dspring.datasource.password=REDACTED -jar a.jar",
            ),
            ("mysql -u root -p secret", "mysql -u root -p secret"),
            ("app --pass x", "app --pass REDACTED"),
            ("app --token --other", "app --token --other"),
            ("app --port 8080 --host x", "app --port 8080 --host x"),
            (
                "psql postgres://bob:pw@db:5432/orders",
                "psql postgres://REDACTED:REDACTED@db:5432/orders",
            ),
            (
                "git clone https://ghp_abc@github.com/x/y",
                "git clone https://REDACTED@github.com/x/y",
            ),
            (
                "app --db=redis://:pw@cache:6379/0",
                "app --db=redis://REDACTED:REDACTED@cache:6379/0",
            ),
            ("app http://example.com/a@b", "app http://example.com/a@b"),
            ("app PWD=/home/x", "app PWD=/home/x"),
        ];
        for (input, want) in cases {
            assert_eq!(redact_args(&args(input)).join(" "), want, "input: {input}");
        }
        let header =
            vec!["curl".to_owned(), "-H".to_owned(), "Authorization: Bearer abc".to_owned()];
        assert_eq!(redact_args(&header)[2], "Authorization: REDACTED");
        let both = vec!["app".to_owned(), "--password=a: b".to_owned()];
        assert_eq!(redact_args(&both)[1], "--password=REDACTED");
        let title = vec!["worker --token abc".to_owned()];
        assert_eq!(redact_args(&title), vec!["worker --token REDACTED"]);
    }

    #[test]
    fn cuts_long_command_lines_at_a_char_boundary() {
        let long = vec!["é".repeat(MAX_COMMAND_LINE)];
        let joined = join_command_line(&long);
        assert!(joined.len() <= MAX_COMMAND_LINE);
        assert!(joined.len() >= MAX_COMMAND_LINE - 1);
    }

    #[test]
    fn names_interpreted_programs() {
        let cases: [(&str, &str, Option<&str>); 33] = [
            ("python3", "python3 app.py", Some("app")),
            ("python3.11", "/usr/bin/python3.11 -u /srv/orders/main.py --port 80", Some("main")),
            ("python3", "python3 -m uvicorn main:app", Some("uvicorn")),
            ("python3", "python3 -mhttp.server 8000", Some("http.server")),
            ("python3", "python3 -u -W ignore -X dev worker.py", Some("worker")),
            ("python3", "python3 -Wignore tool.py", Some("tool")),
            ("python3", "python3 -c print(1)", None),
            ("python3", "python3 -uc print(1)", None),
            ("python3", "python3", None),
            ("python3", "/usr/bin/python3 /usr/local/bin/gunicorn app:app", Some("gunicorn")),
            ("node", "node server.js", Some("server")),
            (
                "node",
                "node --require ./tracing.js --max-old-space-size=512 dist/api.mjs",
                Some("api"),
            ),
            ("node", "node -r dotenv/config index.ts", Some("index")),
            ("node", "node -e console.log(1)", None),
            ("ruby", "ruby -I lib bin/rails server", Some("rails")),
            ("ruby3.2", "ruby3.2 -e puts(1)", None),
            ("perl", "perl -w -Ilib /opt/app/worker.pl", Some("worker")),
            ("perl", "perl -e print", None),
            ("php8.2", "php -d memory_limit=1G artisan serve", Some("artisan")),
            ("php", "php -f /var/www/index.php", Some("index")),
            ("php", "php -r echo(1);", None),
            (
                "java",
                "java -Xmx1g -Dx=y -jar /app/orders-service-0.0.1-SNAPSHOT.jar",
                Some("orders-service"),
            ),
            ("java", "java -jar app.jar", Some("app")),
            (
                "java",
                "java -cp lib/*:app.jar -ea com.example.billing.BillingMain arg",
                Some("BillingMain"),
            ),
            ("java", "java --module-path mods -m com.shop/com.shop.Main", Some("com.shop")),
            ("java", "java Hello.java", Some("Hello")),
            ("bash", "bash -e /opt/run-backup.sh", Some("run-backup")),
            ("sh", "sh -c exec foo", None),
            ("bash", "/bin/bash -o pipefail entrypoint.sh", Some("entrypoint")),
            ("dotnet", "dotnet Orders.Api.dll", Some("Orders.Api")),
            ("dotnet", "dotnet run", None),
            ("nginx", "nginx -g daemon off;", None),
            ("orders", "./orders --port 80", None),
        ];
        for (exe, cmd, want) in cases {
            assert_eq!(program_name(exe, &args(cmd)).as_deref(), want, "{exe}: {cmd}");
        }
    }

    #[test]
    fn names_programs_from_rewritten_titles() {
        let title = |s: &str| vec![s.to_owned()];
        assert_eq!(
            program_name("python3", &title("gunicorn: master [app:app]")).as_deref(),
            Some("gunicorn")
        );
        assert_eq!(program_name("node", &title("npm start")).as_deref(), Some("npm"));
        assert_eq!(program_name("node", &title("node /srv/api.js --x")).as_deref(), Some("api"));
        assert_eq!(program_name("nginx", &title("nginx: worker process")), None);
    }

    #[test]
    fn recognizes_runtimes() {
        assert_eq!(Runtime::from_name("/usr/bin/python3.12"), Some(Runtime::Python));
        assert_eq!(Runtime::from_name("pypy3"), Some(Runtime::Python));
        assert_eq!(Runtime::from_name("php8.2"), Some(Runtime::Php));
        assert_eq!(Runtime::from_name("perl5.36.0"), Some(Runtime::Perl));
        assert_eq!(Runtime::from_name("pythonista"), None);
        assert_eq!(Runtime::from_name("javac"), None);
    }
}
