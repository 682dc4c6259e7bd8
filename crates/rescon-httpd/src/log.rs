//! The access log: one line per request, the Combined Log Format followed by what rescon adds:
//! the container the request was charged to and the CPU it was charged.
//!
//! ```text
//! 127.0.0.1 - - [22/Nov/2026:13:45:00 +0000] "GET /index.html HTTP/1.1" 200 1234 "-" "curl/8.5" container=17 cpu_us=85 dur_us=412 vhost=demo class=local
//! ```
//!
//! Fields that come from the client (the request line, referer, user agent) are escaped so a line
//! cannot be forged or broken: `"` and `\` get a backslash, and control and non-ASCII bytes are
//! written `\xHH`, as nginx does.

use rescon::ContainerId;
use std::fmt::Write;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What one access log line says.
#[derive(Clone, Debug)]
pub struct AccessLogEntry<'a> {
    /// The client's address.
    pub remote: IpAddr,
    /// When the request arrived.
    pub time: SystemTime,
    /// The request line as received, or its parts joined (`GET /x HTTP/1.1`).
    pub request_line: &'a [u8],
    /// The status sent.
    pub status: u16,
    /// Body bytes sent: fewer than its length if the body was cut, none for `HEAD`.
    pub bytes: u64,
    /// The `Referer` header.
    pub referer: Option<&'a [u8]>,
    /// The `User-Agent` header.
    pub user_agent: Option<&'a [u8]>,
    /// The container the request was charged to.
    pub container: ContainerId,
    /// The CPU charged to the request (user level plus the kernel's for CGI).
    pub cpu: Duration,
    /// From arrival to the last byte sent.
    pub duration: Duration,
    /// The virtual host's name.
    pub vhost: &'a str,
    /// The client class's name.
    pub class: &'a str,
}

/// Appends `b` escaped for a log: `"` and `\\` get a backslash, control and non-ASCII bytes are
/// written `\\xHH` (as nginx writes its logs), so the bytes can neither end a line nor a quoted
/// field. Every byte that comes from a client or a script goes through this before a log.
///
/// ```
/// let mut s = String::new();
/// rescon_httpd::log::escape_into(&mut s, b"a\"b\\c\n\x00\xff");
/// assert_eq!(s, r#"a\"b\\c\x0A\x00\xFF"#);
/// ```
pub fn escape_into(out: &mut String, b: &[u8]) {
    for &c in b {
        escape_byte(out, c);
    }
}

/// Appends one byte escaped as [`escape_into`] does.
#[inline]
pub fn escape_byte(out: &mut String, c: u8) {
    match c {
        b'"' => out.push_str("\\\""),
        b'\\' => out.push_str("\\\\"),
        0x20..=0x7e => out.push(c as char),
        _ => {
            const HEX: &[u8; 16] = b"0123456789ABCDEF";
            out.push_str("\\x");
            out.push(HEX[usize::from(c >> 4)] as char);
            out.push(HEX[usize::from(c & 15)] as char);
        }
    }
}

/// How many bytes [`escape_byte`] writes for `c`.
#[inline]
pub fn escaped_len(c: u8) -> usize {
    match c {
        b'"' | b'\\' => 2,
        0x20..=0x7e => 1,
        _ => 4,
    }
}

fn quoted(out: &mut String, b: Option<&[u8]>) {
    out.push('"');
    match b {
        Some(b) => escape_into(out, b),
        None => out.push('-'),
    }
    out.push('"');
}

/// A name we chose (vhost, class): only safe characters, anything else as `_`.
fn plain(out: &mut String, s: &str) {
    out.extend(s.chars().map(|c| {
        if c.is_ascii_graphic() && c != '"' {
            c
        } else {
            '_'
        }
    }));
}

/// `22/Nov/2026:13:45:00 +0000`, the Common Log Format's time, in UTC.
pub fn clf_time(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm, proleptic Gregorian).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{day:02}/{}/{year}:{:02}:{:02}:{:02} +0000",
        MONTHS[(month - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

impl AccessLogEntry<'_> {
    /// The line, without the newline.
    pub fn format(&self) -> String {
        let mut out = String::with_capacity(160);
        let _ = write!(out, "{} - - [{}] ", self.remote, clf_time(self.time));
        quoted(&mut out, Some(self.request_line));
        let _ = write!(out, " {} {} ", self.status, self.bytes);
        quoted(&mut out, self.referer);
        out.push(' ');
        quoted(&mut out, self.user_agent);
        let _ = write!(
            out,
            " container={} cpu_us={} dur_us={} vhost=",
            self.container,
            self.cpu.as_micros(),
            self.duration.as_micros()
        );
        plain(&mut out, self.vhost);
        out.push_str(" class=");
        plain(&mut out, self.class);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry<'a>(line: &'a [u8], ua: Option<&'a [u8]>) -> AccessLogEntry<'a> {
        AccessLogEntry {
            remote: "127.0.0.2".parse().unwrap(),
            time: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            request_line: line,
            status: 200,
            bytes: 1234,
            referer: None,
            user_agent: ua,
            container: ContainerId::from_raw(17).unwrap(),
            cpu: Duration::from_micros(85),
            duration: Duration::from_micros(412),
            vhost: "demo",
            class: "local",
        }
    }

    #[test]
    fn the_line() {
        assert_eq!(
            entry(b"GET /index.html HTTP/1.1", Some(b"curl/8.5")).format(),
            "127.0.0.2 - - [14/Nov/2023:22:13:20 +0000] \"GET /index.html HTTP/1.1\" 200 1234 \"-\" \"curl/8.5\" container=17 cpu_us=85 dur_us=412 vhost=demo class=local"
        );
    }

    #[test]
    fn client_bytes_cannot_forge_lines_or_fields() {
        let line = entry(
            b"GET /\"x\\\n127.0.0.1 - - [fake] HTTP/1.1",
            Some(b"\xff\x1b[31m"),
        )
        .format();
        assert!(!line.contains('\n'));
        assert!(
            line.contains("\"GET /\\\"x\\\\\\x0A127.0.0.1 - - [fake] HTTP/1.1\""),
            "{line}"
        );
        assert!(line.contains("\"\\xFF\\x1B[31m\""), "{line}");
        let mut e = entry(b"GET / HTTP/1.1", None);
        e.vhost = "a b\"c";
        assert!(e.format().ends_with("vhost=a_b_c class=local"));
    }

    #[test]
    fn clf_dates() {
        assert_eq!(clf_time(UNIX_EPOCH), "01/Jan/1970:00:00:00 +0000");
        // A leap day, and the last second of a year.
        assert_eq!(
            clf_time(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "29/Feb/2000:00:00:00 +0000"
        );
        assert_eq!(
            clf_time(UNIX_EPOCH + Duration::from_secs(1_704_067_199)),
            "31/Dec/2023:23:59:59 +0000"
        );
    }
}
