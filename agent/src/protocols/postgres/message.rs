//! PostgreSQL message bodies: `Bind` parameter values (binary ones decoded by type), command
//! tags, error responses, C strings. Pure functions over one message's bytes.

use std::sync::Arc;

use super::*;

/// The values of a `Bind` body after its portal and statement names: format codes, then each
/// value as an `i32` length (-1 = NULL) and its bytes. A body cut by the capture gives the values
/// it holds whole, then the cut one as far as it goes.
pub(super) fn bind_parameters(body: &[u8], types: Option<&[u32]>) -> PgParameters {
    let mut values = Vec::new();
    let mut r = BodyReader(body);
    let Some(nformats) = r.u16() else { return values.into() };
    let mut formats = Vec::with_capacity(usize::from(nformats).min(MAX_PARAMETERS));
    for _ in 0..nformats {
        match r.u16() {
            Some(f) if formats.len() < MAX_PARAMETERS => formats.push(f),
            Some(_) => {}
            None => return values.into(),
        }
    }
    let Some(nparams) = r.u16() else { return values.into() };
    for i in 0..usize::from(nparams).min(MAX_PARAMETERS) {
        let Some(len) = r.i32() else { break };
        let binary = match formats.len() {
            0 => false,
            1 => formats[0] == 1,
            _ => formats.get(i) == Some(&1),
        };
        if len < 0 {
            values.push(None);
            continue;
        }
        let bytes = r.take(len as usize);
        let cut = bytes.len() < len as usize || bytes.len() > MAX_PARAMETER_BYTES;
        let bytes = &bytes[..bytes.len().min(MAX_PARAMETER_BYTES)];
        let decoded = match (binary, cut) {
            (true, false) => types.and_then(|t| t.get(i)).and_then(|&oid| decode_binary(oid, bytes)),
            _ => None,
        };
        let mut value = if let Some(v) = decoded {
            v
        } else if binary {
            let mut v = String::with_capacity(2 + 2 * bytes.len());
            v.push_str("\\x");
            v.push_str(&crate::spans::hex(bytes));
            v
        } else {
            truncate_lossy(bytes, MAX_PARAMETER_BYTES)
        };
        if cut {
            value.push('…');
        }
        values.push(Some(value));
    }
    values.into()
}

/// Parameter type OIDs: an `i16` count then that many `u32` (a `Parse` body after its SQL, or a
/// `ParameterDescription`). `None` when none is given or the list is cut.
pub(super) fn type_oids(body: &[u8]) -> Option<Arc<[u32]>> {
    let mut r = BodyReader(body);
    let n = usize::from(r.u16()?).min(MAX_PARAMETERS);
    let oids: Vec<u32> = (0..n).map_while(|_| r.i32().map(|v| v as u32)).collect();
    (oids.len() == n && oids.iter().any(|&o| o != 0)).then(|| oids.into())
}

/// A binary-format value of a common built-in type, as PostgreSQL would print it.
pub(super) fn decode_binary(oid: u32, b: &[u8]) -> Option<String> {
    const BOOL: u32 = 16;
    const NAME: u32 = 19;
    const INT8: u32 = 20;
    const INT2: u32 = 21;
    const INT4: u32 = 23;
    const TEXT: u32 = 25;
    const OID: u32 = 26;
    const FLOAT4: u32 = 700;
    const FLOAT8: u32 = 701;
    const BPCHAR: u32 = 1042;
    const VARCHAR: u32 = 1043;
    const UUID: u32 = 2950;
    Some(match (oid, b.len()) {
        (BOOL, 1) => if b[0] != 0 { "t" } else { "f" }.to_owned(),
        (INT2, 2) => i16::from_be_bytes(b.try_into().ok()?).to_string(),
        (INT4, 4) => i32::from_be_bytes(b.try_into().ok()?).to_string(),
        (OID, 4) => u32::from_be_bytes(b.try_into().ok()?).to_string(),
        (INT8, 8) => i64::from_be_bytes(b.try_into().ok()?).to_string(),
        (FLOAT4, 4) => f32::from_be_bytes(b.try_into().ok()?).to_string(),
        (FLOAT8, 8) => f64::from_be_bytes(b.try_into().ok()?).to_string(),
        (TEXT | NAME | BPCHAR | VARCHAR, _) => String::from_utf8_lossy(b).into_owned(),
        (UUID, 16) => {
            let h = crate::spans::hex(b);
            format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
        }
        _ => return None,
    })
}

/// Big-endian fields of a message body, front to back; reads past the end give `None`.
pub(super) struct BodyReader<'a>(&'a [u8]);

impl<'a> BodyReader<'a> {
    fn u16(&mut self) -> Option<u16> {
        let (v, rest) = self.0.split_first_chunk::<2>()?;
        self.0 = rest;
        Some(u16::from_be_bytes(*v))
    }

    fn i32(&mut self) -> Option<i32> {
        let (v, rest) = self.0.split_first_chunk::<4>()?;
        self.0 = rest;
        Some(i32::from_be_bytes(*v))
    }

    /// Up to `n` bytes (fewer when the body ends first).
    fn take(&mut self, n: usize) -> &'a [u8] {
        let (v, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        v
    }
}

/// A `CommandComplete` tag: `SELECT 5`, `INSERT 0 1`, `UPDATE 3`, `CREATE TABLE`, ...
pub(super) struct CommandTag {
    pub(super) command: String,
    pub(super) rows: Option<u64>,
}

impl CommandTag {
    pub(super) fn parse(tag: &[u8]) -> CommandTag {
        let tag = String::from_utf8_lossy(&tag[..tag.len().min(64)]);
        let words: Vec<&str> = tag.split_ascii_whitespace().collect();
        let counted = matches!(
            words.first().copied(),
            Some("SELECT" | "INSERT" | "UPDATE" | "DELETE" | "MERGE" | "FETCH" | "MOVE" | "COPY")
        );
        let rows = if counted { words.last().and_then(|w| w.parse().ok()) } else { None };
        let command = if counted {
            words.first().copied().unwrap_or_default().to_owned()
        } else {
            words.join(" ")
        };
        CommandTag { command, rows }
    }
}

pub(super) fn parse_error(body: &[u8]) -> PgError {
    let mut error = PgError { code: String::new(), severity: String::new(), message: String::new() };
    let mut rest = body;
    while let Some((&field, after)) = rest.split_first() {
        if field == 0 {
            break;
        }
        let (value, after) = cstr(after);
        rest = after;
        match field {
            b'C' => error.code = truncate_lossy(value, 8),
            b'V' => error.severity = truncate_lossy(value, 16),
            b'S' if error.severity.is_empty() => error.severity = truncate_lossy(value, 16),
            b'M' => error.message = truncate_lossy(value, MAX_ERROR_MESSAGE),
            _ => {}
        }
    }
    error
}

/// A NUL-terminated string and what follows it; without a NUL, all of `bytes` (a cut message).
pub(super) fn cstr(bytes: &[u8]) -> (&[u8], &[u8]) {
    match bytes.iter().position(|&b| b == 0) {
        Some(i) => (&bytes[..i], &bytes[i + 1..]),
        None => (bytes, &[]),
    }
}

pub(super) fn truncate_lossy(bytes: &[u8], max: usize) -> String {
    let s = String::from_utf8_lossy(&bytes[..bytes.len().min(max)]);
    s.into_owned()
}

pub(super) fn sql_text(bytes: &[u8]) -> Arc<str> {
    Arc::from(truncate_lossy(bytes, MAX_SQL_BYTES))
}

pub(super) fn name_text(bytes: &[u8]) -> Arc<str> {
    Arc::from(truncate_lossy(bytes, 256))
}
