//! Command lines: splitting `/proc/PID/cmdline` (rewritten titles included), redacting secrets,
//! and naming the program that an interpreter or VM runs (`python3 -u app.py` → `app`,
//! `java -jar orders-1.2.jar` → `orders`) or the application an app server hosts
//! (`gunicorn orders:app` → `orders`).
//!
//! Pure functions over bytes and strings; nothing here reads `/proc`. Redaction is a best effort
//! on common shapes (`--password=x`, `--token x`, `PGPASSWORD=x`, `-Dfoo.secret=x`,
//! `scheme://user:pass@host`, `http://h/p?token=x`, `Authorization: Bearer x`, `Cookie: x`); it
//! deliberately keeps ambiguous short flags (`-p secret` may be a port) and does not try to
//! recognize bare secret values.

use crate::protocols::http1::redact::redact_query;

/// What replaces a secret value.
pub const REDACTED: &str = "REDACTED";

/// Longest `process.command_line` kept, in bytes (cut at a character boundary).
pub const MAX_COMMAND_LINE: usize = 4096;

/// Longest service name derived from a command line, in bytes.
const MAX_NAME: usize = 255;

/// Splits the NUL-separated bytes of `/proc/PID/cmdline` into arguments.
///
/// Invalid UTF-8 is replaced (lossy); trailing NULs make no empty last arguments (a process
/// that rewrote its title over a longer command line, such as a PostgreSQL backend, leaves the
/// rest of the old one as NULs). A process that rewrote its title (`nginx: worker process`)
/// yields one argument with spaces; a PostgreSQL backend's title loses its current activity
/// (see [`strip_backend_activity`]).
pub fn split_cmdline(bytes: &[u8]) -> Vec<String> {
    let end = bytes.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
    let bytes = &bytes[..end];
    if bytes.is_empty() {
        return Vec::new();
    }
    let mut args: Vec<String> = bytes
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    if let [title] = args.as_mut_slice() {
        if let Some(stable) = strip_backend_activity(title) {
            *title = stable;
        }
    }
    args
}

/// A PostgreSQL backend's title without what it is doing right now, which changes with every
/// statement: `postgres: [cluster: ]user db 127.0.0.1(51094) idle in transaction` →
/// `postgres: user db 127.0.0.1(51094)` (`[local]` for a Unix socket). `None` for any other
/// title (`postgres: checkpointer` is kept whole).
pub fn strip_backend_activity(title: &str) -> Option<String> {
    let rest = title.strip_prefix("postgres: ")?;
    let is_client = |w: &str| {
        w == "[local]"
            || w.strip_suffix(')')
                .and_then(|w| w.rsplit_once('('))
                .is_some_and(|(host, port)| {
                    !host.is_empty() && !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit())
                })
    };
    let words: Vec<&str> = rest.split_whitespace().collect();
    let client = words.iter().position(|w| is_client(w))?;
    Some(format!("postgres: {}", words[..=client].join(" ")))
}

/// True while a process shows a command line it is about to replace: a PostgreSQL backend
/// just forked shows the postmaster's arguments until it sets its title (`postgres: user db
/// host(port) ...`), so its identity is worth reading again soon.
pub fn title_pending(exe_name: &str, args: &[String]) -> bool {
    exe_name == "postgres" && !matches!(args, [title] if title.starts_with("postgres: "))
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
    let mut after_flag = false;
    for arg in args {
        let flag_value =
            std::mem::replace(&mut after_flag, arg.starts_with('-') && !arg.contains('='));
        if redact_next && !arg.starts_with('-') {
            out.push(REDACTED.to_owned());
            redact_next = false;
            continue;
        }
        redact_next = false;
        let mut arg = redact_urls(arg);
        let header = arg.find(": ");
        // An `=` inside a URL's query is not an assignment: `redact_urls` took care of it.
        let assignment = arg.find('=').filter(|eq| !arg[..*eq].contains("://"));
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
        } else if flag_value && !arg.starts_with('-') && !arg.contains(' ') && is_secret_key(&arg) {
            // A flag's value that names a secret, its own value next: `pgbench -D pw=x` shows
            // as `-D pw x` once pgbench has cut its argument at the `=` in place.
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
/// `apikey`, `auth`, `credential`, `privatekey`, `cookie` (`curl -H 'Cookie: x'`, `-b`'s long
/// form `--cookie x`) anywhere in the key, or a key that is exactly
/// `pass` or `pw`. A Java property prefix (`-D`) is ignored.
pub fn is_secret_key(key: &str) -> bool {
    let key = key.trim_start_matches('-');
    let key = key
        .strip_prefix('D')
        .filter(|k| k.contains('.'))
        .unwrap_or(key);
    let norm: String = key
        .chars()
        .filter(|c| !matches!(c, '-' | '_' | '.'))
        .flat_map(char::to_lowercase)
        .collect();
    const PATTERNS: [&str; 9] = [
        "password",
        "passwd",
        "secret",
        "token",
        "apikey",
        "auth",
        "credential",
        "privatekey",
        "cookie",
    ];
    PATTERNS.iter().any(|p| norm.contains(p)) || norm == "pass" || norm == "pw"
}

/// Replaces the user-info of every `scheme://user:pass@host` in `arg` by `REDACTED:REDACTED@`
/// (or `REDACTED@` when there is no password), as the URL semantic conventions ask, and the
/// values of sensitive query parameters (`?token=x`, see [`redact_query`]) by `REDACTED`.
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
                out.push_str(if userinfo.contains(':') {
                    "REDACTED:REDACTED"
                } else {
                    REDACTED
                });
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        // The rest of the URL: its query's sensitive values go, as in `url.full`.
        let after = &tail[authority_end..];
        let url_end = after.find(' ').unwrap_or(after.len());
        let (url, _) = after.split_at(url_end);
        match url.split_once('?') {
            Some((path, query_and_fragment)) => {
                let (query, fragment) = match query_and_fragment.split_once('#') {
                    Some((q, f)) => (q, Some(f)),
                    None => (query_and_fragment, None),
                };
                out.push_str(path);
                out.push('?');
                out.push_str(&redact_query(query));
                if let Some(f) = fragment {
                    out.push('#');
                    out.push_str(f);
                }
            }
            None => out.push_str(url),
        }
        rest = &after[url_end..];
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

/// Whether the native user stack of a process running `exe_name` can name its code: not for
/// interpreters and virtual machines (Python, Node.js, Ruby, Perl, PHP, Java, shells, .NET),
/// whose frames are the interpreter's own (`_PyEval_EvalFrameDefault`, `sock_send_impl`).
/// Their stacks cost the most to capture and unwind (no frame pointers) and name nothing of the
/// application, so they are not taken.
pub fn stacks_name_code(exe_name: &str) -> bool {
    Runtime::from_name(exe_name).is_none()
}

impl Runtime {
    /// Extensions dropped from a script's file name to name its program.
    fn script_extensions(self) -> &'static [&'static str] {
        match self {
            Runtime::Python => &[".pyc", ".pyw", ".py"],
            Runtime::Node => &[".mjs", ".cjs", ".js", ".mts", ".cts", ".ts"],
            Runtime::Ruby => &[".rb"],
            Runtime::Perl => &[".pl", ".pm", ".cgi"],
            Runtime::Php => &[".php"],
            Runtime::Shell => &[".sh", ".bash"],
            Runtime::Java | Runtime::Dotnet => &[],
        }
    }

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

/// What besides its arguments tells how to name a program.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NameHints<'a> {
    /// The process's working directory (`/proc/PID/cwd`), for app servers whose app names no
    /// module of its own (`gunicorn app:app` in `/srv/orders` → `orders`).
    pub cwd: Option<&'a str>,
    /// The name PM2 gave the app (`name` in the environment of a process PM2 started).
    pub pm2_name: Option<&'a str>,
}

/// The name of the program an interpreter, VM or app server runs, from its arguments (`args[0]`
/// is the interpreter itself), or `None` when `exe_name` and `args[0]` are no known interpreter
/// or app server, or the arguments name no script (`python -c ...`, `node -e ...`, a REPL, stdin).
///
/// Scripts and jars are named by their file name without extension (`/srv/app.py` → `app`,
/// `orders-service-0.0.1-SNAPSHOT.jar` → `orders-service`), Python modules by their name
/// (`-m http.server` → `http.server`), Java main classes by their simple name. Programs that host
/// an application (see [`Host`]: gunicorn, uvicorn, uwsgi, celery, Puma, Unicorn, npm, PM2,
/// `node_modules/.bin/*`, Spring Boot's launchers, `dotnet run`) are named by the application:
/// its module (`gunicorn orders.wsgi:application` → `orders`), else the directory it is served
/// from (`--chdir`, `config.ru`'s, the working directory's), else the host's own name.
pub fn program_name(exe_name: &str, args: &[String], hints: &NameHints<'_>) -> Option<String> {
    if let Some(name) = hints.pm2_name.and_then(clean) {
        return Some(name);
    }
    // A rewritten title (`gunicorn: master [app:app]`, `npm start`) is one argument with spaces.
    let titled = Runtime::from_name(exe_name).is_some() || Host::from_name(exe_name).is_some();
    if args.len() == 1 && args[0].contains(' ') && titled {
        let words: Vec<String> = args[0].split_whitespace().map(str::to_owned).collect();
        let first = words.first()?.trim_start_matches('[').trim_end_matches(':');
        if let Some(host) = Host::from_name(first) {
            return clean(&host.app_from_title(first, &words[1..], hints));
        }
        if Runtime::from_name(first).is_none() {
            return clean(basename(first));
        }
        return program_name(exe_name, &words, hints);
    }
    // An app server that is a program of its own (uwsgi).
    if let Some(host) = Host::from_name(exe_name) {
        return clean(&host.app(exe_name, args.get(1..).unwrap_or_default(), hints));
    }
    let runtime = Runtime::from_name(exe_name).or_else(|| Runtime::from_name(args.first()?))?;
    let rest = args.get(1..)?;
    let found = match runtime {
        Runtime::Python => python(rest),
        Runtime::Node => node(rest),
        Runtime::Ruby => ruby(rest),
        Runtime::Perl => perl(rest),
        Runtime::Php => php(rest),
        Runtime::Java => return java(rest, hints).as_deref().and_then(clean),
        Runtime::Shell => shell(rest),
        Runtime::Dotnet => return dotnet(rest, hints).as_deref().and_then(clean),
    }?;
    if runtime == Runtime::Node {
        if let Some(app) = node_modules_app(&found.program, hints) {
            return clean(&app);
        }
    }
    let name = script_stem(&found.program, runtime.script_extensions());
    if let Some(host) = Host::from_name(&name) {
        return clean(&host.app(&name, rest.get(found.next..).unwrap_or_default(), hints));
    }
    clean(&name)
}

/// Programs that run an application given on their command line, named after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Host {
    /// gunicorn: `module:app` (its `--name` first), `--chdir`.
    Gunicorn,
    /// uvicorn, hypercorn, daphne, granian, waitress-serve: `module:app`, `--app-dir`.
    Asgi,
    /// celery: `-A`/`--app module`.
    Celery,
    /// uWSGI: `--module`/`-w`/`--wsgi`, `--wsgi-file`/`--file`, an `.ini` file, `--chdir`.
    Uwsgi,
    /// Puma, Unicorn, rackup, thin, falcon: `config.ru`'s directory; Puma's title tag.
    Rack,
    /// npm, npx, yarn, pnpm and the PM2 daemon's process containers: the working directory.
    NodeRunner,
}

impl Host {
    /// Recognizes an app server from a program, script or module name (`gunicorn`,
    /// `/usr/bin/uvicorn`, `celeryd`, `uwsgi-core`, `puma`, `npm-cli`, ...).
    pub fn from_name(name: &str) -> Option<Host> {
        Some(match basename(name) {
            "gunicorn" | "gunicorn3" => Host::Gunicorn,
            "uvicorn" | "hypercorn" | "daphne" | "granian" | "waitress-serve" => Host::Asgi,
            "celery" | "celeryd" => Host::Celery,
            "uwsgi" | "uwsgi-core" | "uWSGI" => Host::Uwsgi,
            "puma" | "unicorn" | "unicorn_rails" | "rackup" | "thin" | "falcon" => Host::Rack,
            "npm"
            | "npm-cli"
            | "npx"
            | "npx-cli"
            | "yarn"
            | "yarn.js"
            | "pnpm"
            | "pnpm.cjs"
            | "ProcessContainerFork"
            | "ProcessContainer" => Host::NodeRunner,
            _ => return None,
        })
    }

    /// The application's name from the arguments after the host (`host_name` when none is found).
    fn app(self, host_name: &str, args: &[String], hints: &NameHints<'_>) -> String {
        let (module, dir) = match self {
            Host::Gunicorn => (
                flag_value(args, &["-n", "--name"])
                    .map(str::to_owned)
                    .or_else(|| last_app_spec(args).and_then(module_name)),
                flag_value(args, &["--chdir"]),
            ),
            Host::Asgi => (
                last_app_spec(args).and_then(module_name),
                flag_value(args, &["--app-dir"]),
            ),
            Host::Celery => (
                flag_value(args, &["-A", "--app"]).and_then(module_name),
                flag_value(args, &["--workdir"]),
            ),
            Host::Uwsgi => (
                flag_value(args, &["--module", "-w", "--wsgi", "--mount"])
                    .map(|m| m.rsplit('=').next().unwrap_or(m))
                    .or_else(|| flag_value(args, &["--wsgi-file", "--file"]))
                    // Debian's init script passes its default.ini before the app's.
                    .or_else(|| {
                        args.iter()
                            .rev()
                            .map(String::as_str)
                            .find(|a| a.ends_with(".ini"))
                    })
                    .and_then(module_name),
                flag_value(args, &["--chdir", "--chdir2"]),
            ),
            Host::Rack => (
                flag_value(args, &["--tag"]).map(str::to_owned).or_else(|| {
                    args.iter()
                        .map(String::as_str)
                        .find(|a| a.ends_with(".ru"))
                        .and_then(module_name)
                }),
                flag_value(args, &["--dir", "--chdir"]),
            ),
            Host::NodeRunner => (None, None),
        };
        module
            .or_else(|| dir.and_then(dir_name))
            .or_else(|| hints.cwd.and_then(dir_name))
            .unwrap_or_else(|| host_name.to_owned())
    }

    /// The application's name from a title the host set (`gunicorn: worker [orders:app]`,
    /// `puma 6.4.2 (tcp://0.0.0.0:9292) [shop]`): its bracketed tag, else its arguments.
    fn app_from_title(self, host_name: &str, words: &[String], hints: &NameHints<'_>) -> String {
        let tag = words
            .last()
            .and_then(|w| w.strip_prefix('[')?.strip_suffix(']'))
            .filter(|t| !t.is_empty() && matches!(self, Host::Gunicorn | Host::Rack));
        match tag {
            // gunicorn's tag is its `--name`, by default the app it was given.
            Some(tag) if is_app_spec(tag) => {
                module_name(tag).unwrap_or_else(|| self.app(host_name, &[], hints))
            }
            Some(tag) => tag.to_owned(),
            None => self.app(host_name, words, hints),
        }
    }
}

/// Names that say nothing about which application it is: a module, file or directory so named
/// gives way to its parent (`orders.wsgi` → `orders`, `/srv/blog/wsgi.py` → `blog`).
const GENERIC_NAMES: [&str; 32] = [
    "app",
    "application",
    "apps",
    "asgi",
    "wsgi",
    "main",
    "__main__",
    "server",
    "web",
    "run",
    "start",
    "index",
    "service",
    "config",
    "settings",
    "default",
    "src",
    "lib",
    "core",
    "celery",
    "manage",
    "project",
    "uwsgi",
    "bin",
    "srv",
    "opt",
    "home",
    "root",
    "tmp",
    "usr",
    "var",
    "www",
];

fn is_generic(name: &str) -> bool {
    GENERIC_NAMES.iter().any(|g| g.eq_ignore_ascii_case(name))
}

/// `module.sub:attr` or `module:factory()`: what gunicorn, uvicorn and their kin are given. An
/// address (`127.0.0.1:8000`, `localhost:80`, `unix:/run/x.sock`) is not one.
fn is_app_spec(arg: &str) -> bool {
    let Some((module, attr)) = arg.split_once(':') else {
        return false;
    };
    let ident = |s: &str| {
        s.chars()
            .next()
            .is_some_and(|c| c.is_alphabetic() || c == '_')
            && s.chars().all(|c| c.is_alphanumeric() || c == '_')
    };
    let attr = attr.split_once('(').map_or(attr, |(name, _)| name);
    module.split('.').all(ident) && ident(attr)
}

/// The last `module:app` among the arguments (or an option's `--app=module:app` value).
fn last_app_spec(args: &[String]) -> Option<&str> {
    args.iter()
        .rev()
        .map(|a| a.rsplit_once('=').map_or(a.as_str(), |(_, v)| v))
        .find(|a| is_app_spec(a))
}

/// The value of the first of `flags` among `args`: `--flag value`, `--flag=value`, or `-fvalue`
/// for a one-letter flag.
fn flag_value<'a>(args: &'a [String], flags: &[&str]) -> Option<&'a str> {
    args.iter().enumerate().find_map(|(i, arg)| {
        flags.iter().find_map(|flag| {
            let rest = arg.strip_prefix(flag)?;
            if rest.is_empty() {
                return args
                    .get(i + 1)
                    .map(String::as_str)
                    .filter(|v| !v.starts_with('-'));
            }
            if let Some(value) = rest.strip_prefix('=') {
                return Some(value);
            }
            (flag.len() == 2 && !flag.starts_with("--")).then_some(rest)
        })
    })
}

/// The application a module path or file names: its last part that is not generic
/// (`orders.wsgi:application` → `orders`, `/srv/blog/wsgi.py` → `blog`, `config.ru` → none).
fn module_name(spec: &str) -> Option<String> {
    const EXTS: [&str; 6] = [".py", ".ru", ".ini", ".yaml", ".yml", ".json"];
    let spec = spec.split_once(':').map_or(spec, |(module, _)| module);
    let spec = EXTS
        .iter()
        .find_map(|ext| spec.strip_suffix(ext))
        .unwrap_or(spec);
    let separator = if spec.contains('/') { '/' } else { '.' };
    spec.split(separator)
        .rev()
        .find(|p| !p.is_empty() && *p != "." && *p != ".." && !is_generic(p))
        .map(str::to_owned)
}

/// A directory's name, unless it is generic (`/`, `/root`, `/srv`, `/app`).
fn dir_name(dir: &str) -> Option<String> {
    let name = basename(dir.trim_end_matches('/'));
    (!name.is_empty() && name != "." && name != ".." && !is_generic(name)).then(|| name.to_owned())
}

/// A tool run from a project's `node_modules` (`/srv/shop/node_modules/.bin/next`) runs that
/// project: named by the directory that holds `node_modules`, or the working directory.
fn node_modules_app(script: &str, hints: &NameHints<'_>) -> Option<String> {
    let (project, _) = script.split_once("node_modules/")?;
    match project.trim_end_matches('/') {
        "" | "." => hints.cwd.and_then(dir_name),
        dir => dir_name(dir).or_else(|| hints.cwd.and_then(dir_name)),
    }
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
            return if rest.is_empty() {
                Cluster::SkipNext
            } else {
                Cluster::Flags
            };
        }
    }
    Cluster::Flags
}

/// The program an interpreter was given, as written (a script path or a module name), and the
/// index of the first argument after it (the program's own arguments).
struct Found {
    program: String,
    next: usize,
}

/// Generic walk over interpreter options: `long_with_value` are `--name value` options.
fn walk(
    args: &[String],
    no_program: &str,
    with_value: &str,
    naming: &str,
    long_with_value: &[&str],
) -> Option<Found> {
    let found = |i: usize| {
        args.get(i).map(|program| Found {
            program: program.clone(),
            next: i + 1,
        })
    };
    let mut i = 0;
    while let Some(arg) = args.get(i) {
        if arg == "--" {
            return found(i + 1);
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
                Cluster::Named(Some(program)) => {
                    return Some(Found {
                        program,
                        next: i + 1,
                    })
                }
                Cluster::Named(None) => return found(i + 1),
            }
            i += 1;
            continue;
        }
        return found(i);
    }
    None
}

fn python(args: &[String]) -> Option<Found> {
    walk(args, "c", "WXQ", "m", &["--check-hash-based-pycs"])
}

fn node(args: &[String]) -> Option<Found> {
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
        if matches!(
            a.as_str(),
            "-e" | "--eval" | "-p" | "--print" | "-i" | "--interactive"
        ) {
            return None;
        }
        if !a.starts_with('-') {
            break;
        }
    }
    walk(args, "", "rC", "", &LONG)
}

fn ruby(args: &[String]) -> Option<Found> {
    walk(args, "e", "IrCE", "", &[])
}

fn perl(args: &[String]) -> Option<Found> {
    walk(args, "eE", "I", "", &[])
}

fn php(args: &[String]) -> Option<Found> {
    walk(args, "ra", "cdztS", "f", &[])
}

fn shell(args: &[String]) -> Option<Found> {
    let mut i = 0;
    while let Some(arg) = args.get(i) {
        if arg == "--" {
            return args.get(i + 1).map(|s| Found {
                program: s.clone(),
                next: i + 2,
            });
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
        return Some(Found {
            program: arg.clone(),
            next: i + 1,
        });
    }
    None
}

fn java(args: &[String], hints: &NameHints<'_>) -> Option<String> {
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
    let mut class_path = None;
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
            if matches!(arg.as_str(), "-cp" | "-classpath" | "--class-path") {
                class_path = args.get(i + 1);
            }
            i += 2;
            continue;
        }
        if arg.starts_with('-') || arg.starts_with('@') {
            i += 1;
            continue;
        }
        let class = arg.rsplit('.').next().unwrap_or(arg);
        if SPRING_LAUNCHERS.contains(&class) {
            // Spring Boot's launcher runs the application of the jar on the class path, or of
            // the exploded jar in the working directory.
            let jar = class_path.and_then(|cp| cp.split(':').find(|p| p.ends_with(".jar")));
            return jar
                .map(jar_name)
                .or_else(|| hints.cwd.and_then(dir_name))
                .or(Some(class.to_owned()));
        }
        // A main class (`com.example.Main`) or, in source-file mode, a `.java` file.
        if let Some(src) = arg.strip_suffix(".java") {
            return Some(basename(src).to_owned());
        }
        return Some(class.to_owned());
    }
    None
}

/// Spring Boot's launcher main classes (`org.springframework.boot.loader[.launch].JarLauncher`).
const SPRING_LAUNCHERS: [&str; 3] = ["JarLauncher", "WarLauncher", "PropertiesLauncher"];

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

fn dotnet(args: &[String], hints: &NameHints<'_>) -> Option<String> {
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
        // `dotnet App.dll`; `dotnet run` runs the project in `--project` or the working
        // directory; other SDK commands (`dotnet build`) name no program.
        if arg == "run" {
            let project = flag_value(&args[i + 1..], &["--project", "-p"]);
            return project
                .and_then(|p| dir_name(p.strip_suffix(".csproj").unwrap_or(p)))
                .or_else(|| hints.cwd.and_then(dir_name));
        }
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
        assert_eq!(
            split_cmdline(b"python3\0-u\0app.py\0"),
            args("python3 -u app.py")
        );
        assert_eq!(
            split_cmdline(b"nginx: worker process\0"),
            vec!["nginx: worker process"]
        );
        assert_eq!(split_cmdline(b"no-trailing-nul"), vec!["no-trailing-nul"]);
        assert_eq!(split_cmdline(b"a\0\0b\0"), vec!["a", "", "b"]);
        assert!(split_cmdline(b"").is_empty());
        assert!(split_cmdline(b"\0").is_empty());
        assert_eq!(split_cmdline(b"x\xff\0"), vec!["x\u{fffd}"]);
        assert!(split_cmdline(b"\0\0\0").is_empty());
    }

    /// `/proc/PID/cmdline` of PostgreSQL 15 backends: the title, then NULs where the
    /// postmaster's longer command line was.
    #[test]
    fn postgres_backend_titles_are_stable_and_unpadded() {
        let padded = |title: &str| [title.as_bytes(), &[0u8; 80]].concat();
        let cases = [
            (
                "postgres: postgres postgres 127.0.0.1(52218) initializing",
                "postgres: postgres postgres 127.0.0.1(52218)",
            ),
            (
                "postgres: postgres postgres 127.0.0.1(51094) SELECT",
                "postgres: postgres postgres 127.0.0.1(51094)",
            ),
            (
                "postgres: app orders [local] idle in transaction",
                "postgres: app orders [local]",
            ),
            (
                "postgres: 15/main: bob shop ::1(40000) idle",
                "postgres: 15/main: bob shop ::1(40000)",
            ),
            ("postgres: checkpointer ", "postgres: checkpointer "),
            (
                "postgres: logical replication launcher",
                "postgres: logical replication launcher",
            ),
        ];
        for (title, want) in cases {
            assert_eq!(
                split_cmdline(&padded(title)),
                vec![want.to_owned()],
                "{title}"
            );
        }
        let postmaster = args("/usr/lib/postgresql/15/bin/postgres -D /srv/pg -p 5432");
        assert!(title_pending("postgres", &postmaster));
        assert!(!title_pending(
            "postgres",
            &["postgres: app orders [local]".to_owned()]
        ));
        assert!(!title_pending("python3", &args("python3 app.py")));
    }

    #[test]
    fn redacts_secrets() {
        let cases = [
            (
                "app --password=hunter2 --port=80",
                "app --password=REDACTED --port=80",
            ),
            (
                "app --token abc --verbose",
                "app --token REDACTED --verbose",
            ),
            ("app --api-key abc", "app --api-key REDACTED"),
            ("app --API_KEY=abc", "app --API_KEY=REDACTED"),
            ("app -password abc", "app -password REDACTED"),
            ("app --client-secret=s3", "app --client-secret=REDACTED"),
            ("app --private_key=k", "app --private_key=REDACTED"),
            (
                "app --db-credentials /etc/c",
                "app --db-credentials REDACTED",
            ),
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
            (
                "curl http://h:80/a?token=t&page=2 http://h/b?x=1#f?key=k",
                "curl http://h:80/a?token=REDACTED&page=2 http://h/b?x=1#f?key=k",
            ),
            (
                "curl https://u:p@h/x?api_key=k#top",
                "curl https://REDACTED:REDACTED@h/x?api_key=REDACTED#top",
            ),
            (
                "curl --cookie sid=abc http://h/",
                "curl --cookie REDACTED http://h/",
            ),
            ("pgbench -D pw s3 -t 1 db", "pgbench -D pw REDACTED -t 1 db"),
            ("app --mode token", "app --mode token"),
            ("app pw s3", "app pw s3"),
        ];
        for (input, want) in cases {
            assert_eq!(redact_args(&args(input)).join(" "), want, "input: {input}");
        }
        let header = vec![
            "curl".to_owned(),
            "-H".to_owned(),
            "Authorization: Bearer abc".to_owned(),
        ];
        assert_eq!(redact_args(&header)[2], "Authorization: REDACTED");
        let cookie = vec![
            "curl".to_owned(),
            "-H".to_owned(),
            "Cookie: sid=abc".to_owned(),
        ];
        assert_eq!(redact_args(&cookie)[2], "Cookie: REDACTED");
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
            (
                "python3.11",
                "/usr/bin/python3.11 -u /srv/orders/main.py --port 80",
                Some("main"),
            ),
            ("python3", "python3 -m uvicorn main:app", Some("uvicorn")),
            ("python3", "python3 -mhttp.server 8000", Some("http.server")),
            (
                "python3",
                "python3 -u -W ignore -X dev worker.py",
                Some("worker"),
            ),
            ("python3", "python3 -Wignore tool.py", Some("tool")),
            ("python3", "python3 -c print(1)", None),
            ("python3", "python3 -uc print(1)", None),
            ("python3", "python3", None),
            (
                "python3",
                "/usr/bin/python3 /usr/local/bin/gunicorn app:app",
                Some("gunicorn"),
            ),
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
            (
                "php8.2",
                "php -d memory_limit=1G artisan serve",
                Some("artisan"),
            ),
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
            (
                "java",
                "java --module-path mods -m com.shop/com.shop.Main",
                Some("com.shop"),
            ),
            ("java", "java Hello.java", Some("Hello")),
            ("bash", "bash -e /opt/run-backup.sh", Some("run-backup")),
            ("sh", "sh -c exec foo", None),
            (
                "bash",
                "/bin/bash -o pipefail entrypoint.sh",
                Some("entrypoint"),
            ),
            ("dotnet", "dotnet Orders.Api.dll", Some("Orders.Api")),
            ("dotnet", "dotnet run", None),
            ("nginx", "nginx -g daemon off;", None),
            ("orders", "./orders --port 80", None),
        ];
        for (exe, cmd, want) in cases {
            assert_eq!(name(exe, &args(cmd), None).as_deref(), want, "{exe}: {cmd}");
        }
    }

    fn name(exe: &str, args: &[String], cwd: Option<&str>) -> Option<String> {
        program_name(
            exe,
            args,
            &NameHints {
                cwd,
                pm2_name: None,
            },
        )
    }

    /// Real command lines of app servers (as `/proc/PID/cmdline` shows them, shebang scripts
    /// with their interpreter first), with the working directory they ran in.
    #[test]
    fn names_the_application_an_app_server_runs() {
        // service name | executable | working directory (- unknown) | /proc/PID/cmdline, NULs as spaces
        const CASES: &str = "
            # gunicorn (Debian's /usr/bin/gunicorn, a pip-installed one in a venv).
            orders               | python3.11 | -                   | /usr/bin/python3 /usr/bin/gunicorn -w 2 -b 127.0.0.1:8000 --chdir /srv/x orders:app
            shop                 | python3.11 | /srv/shop           | /srv/shop/.venv/bin/python3 /srv/shop/.venv/bin/gunicorn --bind 0.0.0.0:8000 shop.wsgi:application
            billing              | python3.11 | /srv/billing        | /usr/bin/python3 /usr/bin/gunicorn -b 127.0.0.1:8001 --chdir /srv/billing app:app
            inventory            | python3.11 | /home/ann/inventory | /usr/bin/python3 /usr/bin/gunicorn -b 127.0.0.1:8001 app:app
            payments             | python3.11 | /srv/x              | /usr/bin/python3 /usr/bin/gunicorn -k uvicorn.workers.UvicornWorker -n payments main:app
            payments             | python3.11 | -                   | /usr/bin/python3 /usr/bin/gunicorn --name=payments main:app
            shop                 | python3.11 | -                   | /usr/bin/python3 /usr/bin/gunicorn shop:create_app() -b unix:/run/shop.sock
            gunicorn             | python3.11 | /                   | /usr/bin/python3 /usr/bin/gunicorn app:app
            gunicorn             | python3.11 | /root               | /usr/bin/python3 /usr/bin/gunicorn -c /etc/gunicorn.conf.py
            # uvicorn, hypercorn, waitress.
            catalog              | python3.12 | /srv/catalog        | /app/.venv/bin/python /app/.venv/bin/uvicorn main:app --host 0.0.0.0 --port 8000
            api                  | python3.12 | -                   | python3 -m uvicorn catalog.api:app --reload
            search               | python3.12 | -                   | python3 -m uvicorn app.main:app --app-dir services/search
            notify               | python3.12 | -                   | /usr/bin/python3 /usr/local/bin/hypercorn --bind localhost:8080 notify.asgi:application
            ledger               | python3.12 | -                   | /usr/bin/python3 /usr/local/bin/waitress-serve --listen=*:8080 --call ledger:create_app
            ledger               | python3.12 | -                   | /usr/bin/python3 /usr/local/bin/waitress-serve --app=ledger.wsgi:application
            # celery.
            mailer               | python3.11 | -                   | /srv/mail/.venv/bin/python /srv/mail/.venv/bin/celery -A mailer worker -l INFO
            shop                 | python3.11 | -                   | /usr/bin/python3 /usr/bin/celery --app=shop.celery:app worker --concurrency 2
            reports              | python3.11 | -                   | python3 -m celery -Areports beat
            jobs                 | python3.11 | /srv/jobs           | /usr/bin/python3 /usr/bin/celery worker
            # uWSGI, a program of its own.
            blog                 | uwsgi      | -                   | uwsgi --http :8000 --module blog.wsgi:application --master --processes 4
            notes                | uwsgi-core | -                   | /usr/bin/uwsgi-core --http-socket :9090 --wsgi-file /srv/notes/wsgi.py
            wiki                 | uwsgi      | -                   | uwsgi --http :9090 -w wiki
            forum                | uwsgi-core | -                   | /usr/bin/uwsgi --ini /usr/share/uwsgi/conf/default.ini --ini /etc/uwsgi/apps-enabled/forum.ini --daemonize /var/log/uwsgi/app/forum.log
            tickets              | uwsgi      | -                   | uwsgi --http :8000 --chdir /srv/tickets --wsgi-file wsgi.py
            # Ruby: Puma, Unicorn.
            storefront           | ruby3.1    | /srv/storefront     | /usr/bin/ruby3.1 /usr/local/bin/puma -C config/puma.rb
            blog                 | ruby3.1    | -                   | /usr/bin/ruby3.1 /usr/local/bin/unicorn -c /srv/blog/unicorn.rb /srv/blog/config.ru
            admin                | ruby3.1    | -                   | ruby /usr/local/bin/puma --tag admin -b tcp://127.0.0.1:9292
            # Node: npm, node_modules/.bin, PM2's container.
            shop-web             | node       | -                   | node /srv/shop-web/node_modules/.bin/next start -p 3000
            admin-ui             | node       | /home/ann/admin-ui  | node node_modules/.bin/vite --port 5173
            checkout             | node       | /srv/checkout       | node /usr/lib/node_modules/npm/bin/npm-cli.js start
            chat                 | node       | /srv/chat           | node /usr/lib/node_modules/pm2/lib/ProcessContainerFork.js
            ProcessContainerFork | node       | -                   | node /usr/local/lib/node_modules/pm2/lib/ProcessContainerFork.js
            # Java's Spring Boot launchers; dotnet run.
            orders               | java       | -                   | java -cp /opt/orders-2.1.0.jar org.springframework.boot.loader.launch.JarLauncher
            pricing              | java       | /workspace/pricing  | java -Xmx512m org.springframework.boot.loader.JarLauncher
            Billing.Api          | dotnet     | -                   | dotnet run --project src/Billing.Api/Billing.Api.csproj
            Reports              | dotnet     | /srv/Reports        | dotnet run
        ";
        let cases: Vec<&str> = CASES
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        assert_eq!(cases.len(), 36);
        for line in cases {
            let fields: Vec<&str> = line.splitn(4, " | ").map(str::trim).collect();
            let [want, exe, cwd, cmd] = fields[..] else {
                panic!("bad case: {line}")
            };
            let cwd = (cwd != "-").then_some(cwd);
            assert_eq!(
                name(exe, &args(cmd), cwd).as_deref(),
                Some(want),
                "{exe}: {cmd} (in {cwd:?})"
            );
        }
        // A PM2 app is named as PM2 names it.
        let pm2 = NameHints {
            cwd: Some("/srv/chat"),
            pm2_name: Some("chat-api"),
        };
        let cmd = args("node /usr/lib/node_modules/pm2/lib/ProcessContainerFork.js");
        assert_eq!(
            program_name("node", &cmd, &pm2).as_deref(),
            Some("chat-api")
        );
    }

    #[test]
    fn names_the_application_from_an_app_server_title() {
        let cases: [(&str, &str, Option<&str>, &str); 9] = [
            (
                "python3.11",
                "gunicorn: master [orders:app]",
                None,
                "orders",
            ),
            (
                "python3.11",
                "gunicorn: worker [billing.wsgi:application]",
                None,
                "billing",
            ),
            (
                "python3.11",
                "gunicorn: worker [app:app]",
                Some("/srv/inventory"),
                "inventory",
            ),
            (
                "python3.11",
                "gunicorn: worker [payments]",
                None,
                "payments",
            ),
            (
                "python3.11",
                "[celeryd: celery@web-1:MainProcess] -active- (worker -A mailer -l INFO)",
                None,
                "mailer",
            ),
            (
                "ruby3.1",
                "puma 6.4.2 (tcp://0.0.0.0:9292) [storefront]",
                None,
                "storefront",
            ),
            (
                "ruby3.1",
                "puma: cluster worker 0: 4242 [storefront]",
                None,
                "storefront",
            ),
            (
                "ruby3.1",
                "unicorn worker[0] -c config/unicorn.rb -E production -D",
                Some("/srv/blog"),
                "blog",
            ),
            ("node", "npm start", Some("/srv/checkout"), "checkout"),
        ];
        for (exe, title, cwd, want) in cases {
            assert_eq!(
                name(exe, &[title.to_owned()], cwd).as_deref(),
                Some(want),
                "{exe}: {title}"
            );
        }
    }

    #[test]
    fn tells_an_app_from_an_address() {
        for spec in ["orders:app", "a.b_c.d:create_app()", "_x:y"] {
            assert!(is_app_spec(spec), "{spec}");
        }
        for arg in [
            "127.0.0.1:8000",
            "localhost:80",
            "unix:/run/x.sock",
            "[::]:80",
            ":8000",
            "a:",
            "x.y",
        ] {
            assert!(!is_app_spec(arg), "{arg}");
        }
        assert_eq!(module_name("/srv/blog/wsgi.py").as_deref(), Some("blog"));
        assert_eq!(module_name("app.main:app"), None);
        assert_eq!(dir_name("/srv/orders/"), Some("orders".to_owned()));
        assert_eq!(dir_name("/"), None);
    }

    #[test]
    fn names_programs_from_rewritten_titles() {
        let title = |s: &str| vec![s.to_owned()];
        assert_eq!(
            name("python3", &title("gunicorn: master [app:app]"), None).as_deref(),
            Some("gunicorn")
        );
        assert_eq!(
            name("node", &title("npm start"), None).as_deref(),
            Some("npm")
        );
        assert_eq!(
            name("node", &title("node /srv/api.js --x"), None).as_deref(),
            Some("api")
        );
        assert_eq!(name("nginx", &title("nginx: worker process"), None), None);
    }

    #[test]
    fn recognizes_runtimes() {
        assert_eq!(
            Runtime::from_name("/usr/bin/python3.12"),
            Some(Runtime::Python)
        );
        assert_eq!(Runtime::from_name("pypy3"), Some(Runtime::Python));
        assert_eq!(Runtime::from_name("php8.2"), Some(Runtime::Php));
        assert_eq!(Runtime::from_name("perl5.36.0"), Some(Runtime::Perl));
        assert_eq!(Runtime::from_name("pythonista"), None);
        assert_eq!(Runtime::from_name("javac"), None);
    }
}
