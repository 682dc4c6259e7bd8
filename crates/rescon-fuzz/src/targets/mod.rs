//! The targets, one module per parser. Each module's docs say what it feeds and which
//! properties it checks; a broken property is a panic.
//!
//! Many targets take their first byte as a control byte (a chunk size, a method, a file
//! length) and the rest as the text to parse, so the fuzzer explores both.

pub mod admin;
pub mod cgi;
pub mod config;
pub mod fastcgi;
pub mod filter;
pub mod host;
pub mod static_files;
pub mod stderr;

/// The control byte and the rest (`None` for an empty input).
fn control(data: &[u8]) -> Option<(u8, &[u8])> {
    data.split_first().map(|(c, rest)| (*c, rest))
}

/// Text from bytes, invalid UTF-8 replaced: what a parser taking `&str` gets.
fn text(data: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(data)
}
