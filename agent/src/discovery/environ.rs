//! The few environment variables of a traced process that discovery uses, parsed from the bytes
//! of `/proc/PID/environ`.
//!
//! Only the variables listed in [`EnvHints`] are kept; the rest of the environment (which often
//! holds secrets) is never copied or logged.

/// Most entries kept from `OTEL_RESOURCE_ATTRIBUTES`.
const MAX_RESOURCE_ATTRIBUTES: usize = 128;

/// What discovery reads from a process's environment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EnvHints {
    /// `OTEL_SERVICE_NAME`, when set and not blank.
    pub otel_service_name: Option<String>,
    /// `OTEL_RESOURCE_ATTRIBUTES`, decoded, in order, at most one entry per key (the last wins).
    pub otel_resource_attributes: Vec<(String, String)>,
    /// `KUBERNETES_SERVICE_HOST` is set: the kubelet started the process in a pod.
    pub kubernetes: bool,
    /// `HOSTNAME`, when set (in a pod that does not share the host's network, the pod name).
    pub hostname: Option<String>,
    /// The app's name when PM2 started the process (PM2 sets `pm_id` and `name`).
    pub pm2_name: Option<String>,
}

impl EnvHints {
    /// `service.name` from `OTEL_RESOURCE_ATTRIBUTES`, when set and not blank.
    pub fn resource_service_name(&self) -> Option<&str> {
        self.otel_resource_attributes
            .iter()
            .find(|(k, _)| k == "service.name")
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.trim().is_empty())
    }
}

/// Parses the NUL-separated `KEY=VALUE` entries of `/proc/PID/environ`.
///
/// As `getenv` does, the first entry of a key wins. Invalid UTF-8 in a kept value is replaced.
pub fn parse_environ(bytes: &[u8]) -> EnvHints {
    let mut hints = EnvHints::default();
    let (mut seen_name, mut seen_attrs, mut seen_host) = (false, false, false);
    let (mut pm_id, mut name) = (false, None);
    for entry in bytes.split(|b| *b == 0) {
        let Some(eq) = entry.iter().position(|b| *b == b'=') else {
            continue;
        };
        let (key, value) = (&entry[..eq], &entry[eq + 1..]);
        match key {
            b"OTEL_SERVICE_NAME" if !seen_name => {
                seen_name = true;
                let v = String::from_utf8_lossy(value).trim().to_owned();
                hints.otel_service_name = (!v.is_empty()).then_some(v);
            }
            b"OTEL_RESOURCE_ATTRIBUTES" if !seen_attrs => {
                seen_attrs = true;
                hints.otel_resource_attributes =
                    parse_resource_attributes(&String::from_utf8_lossy(value));
            }
            b"KUBERNETES_SERVICE_HOST" => hints.kubernetes = true,
            b"pm_id" => pm_id = true,
            b"name" if name.is_none() => {
                let v = String::from_utf8_lossy(value).trim().to_owned();
                name = (!v.is_empty()).then_some(v);
            }
            b"HOSTNAME" if !seen_host => {
                seen_host = true;
                let v = String::from_utf8_lossy(value).trim().to_owned();
                hints.hostname = (!v.is_empty()).then_some(v);
            }
            _ => {}
        }
    }
    hints.pm2_name = name.filter(|_| pm_id);
    hints
}

/// Parses `OTEL_RESOURCE_ATTRIBUTES`: `key1=value1,key2=value2`, values percent-encoded (the
/// W3C Baggage format the OpenTelemetry SDKs use).
///
/// Lenient where the SDKs differ: a malformed entry (no `=`, empty key) is skipped rather than
/// discarding the whole variable; keys and values are trimmed; a repeated key keeps its first
/// position and its last value.
pub fn parse_resource_attributes(s: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for entry in s.split(',') {
        let Some((k, v)) = entry.split_once('=') else {
            continue;
        };
        let (k, v) = (k.trim(), percent_decode(v.trim()));
        if k.is_empty() {
            continue;
        }
        if let Some(existing) = out.iter_mut().find(|(key, _)| key == k) {
            existing.1 = v;
        } else if out.len() < MAX_RESOURCE_ATTRIBUTES {
            out.push((k.to_owned(), v));
        }
    }
    out
}

/// Decodes `%XX` escapes; an invalid escape is kept as written.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                .and_then(|h| std::str::from_utf8(h).ok());
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_only_the_variables_it_needs() {
        let env = b"PATH=/usr/bin\0OTEL_SERVICE_NAME= checkout \0DB_PASSWORD=x\0\
            OTEL_RESOURCE_ATTRIBUTES=deployment.environment=prod,service.name=ignored\0\
            KUBERNETES_SERVICE_HOST=10.96.0.1\0HOSTNAME=orders-7d9c4b8f6-x2x9q\0\
            OTEL_SERVICE_NAME=second\0garbage-without-equals\0";
        let hints = parse_environ(env);
        assert_eq!(hints.otel_service_name.as_deref(), Some("checkout"));
        assert_eq!(
            hints.otel_resource_attributes,
            vec![
                ("deployment.environment".to_owned(), "prod".to_owned()),
                ("service.name".to_owned(), "ignored".to_owned()),
            ]
        );
        assert_eq!(hints.resource_service_name(), Some("ignored"));
        assert!(hints.kubernetes);
        assert_eq!(hints.hostname.as_deref(), Some("orders-7d9c4b8f6-x2x9q"));
        assert_eq!(hints.pm2_name, None);
    }

    #[test]
    fn reads_the_name_pm2_gave_an_app() {
        let env =
            b"PM2_HOME=/root/.pm2\0name=orders-api\0pm_id=3\0pm_exec_path=/srv/orders/server.js\0";
        assert_eq!(parse_environ(env).pm2_name.as_deref(), Some("orders-api"));
        // `name` alone is any program's variable, not PM2's.
        assert_eq!(parse_environ(b"name=x\0").pm2_name, None);
    }

    #[test]
    fn blank_values_are_absent() {
        let hints =
            parse_environ(b"OTEL_SERVICE_NAME=  \0OTEL_RESOURCE_ATTRIBUTES=service.name=\0");
        assert_eq!(hints.otel_service_name, None);
        assert_eq!(hints.resource_service_name(), None);
        assert!(!hints.kubernetes);
        assert_eq!(parse_environ(b""), EnvHints::default());
        assert_eq!(parse_environ(b"\xff\xfe\0=\0"), EnvHints::default());
    }

    #[test]
    fn parses_resource_attributes() {
        assert_eq!(
            parse_resource_attributes(
                " a = 1 ,b=x%2Cy%3Dz,,noequals,=empty,c=%zz%+1%4,a=2,d=caf%C3%A9"
            ),
            vec![
                ("a".to_owned(), "2".to_owned()),
                ("b".to_owned(), "x,y=z".to_owned()),
                ("c".to_owned(), "%zz%+1%4".to_owned()),
                ("d".to_owned(), "café".to_owned()),
            ]
        );
        assert!(parse_resource_attributes("").is_empty());
    }
}
