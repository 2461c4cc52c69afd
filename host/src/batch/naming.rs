//! Output file names: stable, filesystem-safe defaults derived from the URL, and the rules a
//! name given in the input must follow.

use sha2::{Digest as _, Sha256};

/// The manifest's file name in the output directory (never an item's name).
pub const MANIFEST: &str = "manifest.jsonl";

/// Longest readable part of a default name (before the hash).
const READABLE_MAX: usize = 80;

/// The default output name of `url`: host, port, path and query with every character outside
/// `[A-Za-z0-9._-]` replaced by `_` (runs collapsed, at most 80 characters), then `-` and the first
/// 12 hex digits of the URL's SHA-256, so that two URLs that sanitise alike still differ. The same
/// URL always gives the same name, on every machine.
pub fn default_name(url: &url::Url) -> String {
    let mut readable = String::new();
    readable.push_str(url.host_str().unwrap_or("nohost"));
    if let Some(port) = url.port() {
        use std::fmt::Write as _;
        let _ = write!(readable, "_{port}");
    }
    readable.push_str(url.path());
    if let Some(q) = url.query() {
        readable.push('_');
        readable.push_str(q);
    }
    let mut out = String::with_capacity(READABLE_MAX + 13);
    let mut last_sub = false;
    for c in readable.chars() {
        let safe = c.is_ascii_alphanumeric() || matches!(c, '.' | '-');
        if safe {
            out.push(c);
            last_sub = false;
        } else if !last_sub {
            out.push('_');
            last_sub = true;
        }
        if out.len() >= READABLE_MAX {
            break;
        }
    }
    let out = out.trim_matches(|c| c == '_' || c == '.');
    let digest = Sha256::digest(url.as_str().as_bytes());
    let mut name = String::with_capacity(out.len() + 13);
    name.push_str(out);
    name.push('-');
    name.push_str(&super::manifest::hex(&digest[..6]));
    name
}

/// Check a name given in the input: one path component that is safe on common filesystems.
/// Refused: empty, longer than 200 bytes, `/`, `\`, control characters, a leading `.` (hidden
/// files, `.` and `..`, and our own `.NAME.partial-*` temporary files), and the manifest's name.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the name is empty".into());
    }
    if name.len() > 200 {
        return Err("the name is longer than 200 bytes".into());
    }
    if name.starts_with('.') {
        return Err(format!("the name {name:?} starts with '.'"));
    }
    if name
        .chars()
        .any(|c| c == '/' || c == '\\' || c.is_control())
    {
        return Err(format!(
            "the name {name:?} has '/', '\\' or a control character; it must be a plain file name"
        ));
    }
    if name == MANIFEST {
        return Err(format!("the name {MANIFEST:?} is the manifest's"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> url::Url {
        url::Url::parse(s).expect("url")
    }

    #[test]
    fn default_names_are_stable_and_safe() {
        let a = default_name(&u("https://127.0.0.1:8443/items/5?fault=429&x=a b"));
        assert_eq!(
            a,
            default_name(&u("https://127.0.0.1:8443/items/5?fault=429&x=a b"))
        );
        assert!(
            a.starts_with("127.0.0.1_8443_items_5_fault_429_x_a_20b-"),
            "{a}"
        );
        check_name(&a).expect("a default name passes check_name");
        // Alike once sanitised, yet different names.
        let b = default_name(&u("https://h/a/b"));
        let c = default_name(&u("https://h/a_b"));
        assert_ne!(b, c);
        // Nasty URLs still give one safe component.
        for nasty in [
            "https://h/../../etc/passwd",
            "https://h/%2e%2e/x",
            "https://h/.hidden",
            "https://h/",
            "https://h/a\\b",
        ] {
            let n = default_name(&u(nasty));
            check_name(&n).unwrap_or_else(|e| panic!("{nasty}: {n}: {e}"));
        }
        let long = format!("https://h/{}", "x".repeat(5000));
        assert!(default_name(&u(&long)).len() <= READABLE_MAX + 13);
    }

    #[test]
    fn given_names_are_checked() {
        check_name("report-2024.csv").expect("plain name");
        for bad in ["", ".", "..", ".x", "a/b", "a\\b", "a\nb", MANIFEST] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_name(&"n".repeat(201)).is_err());
    }
}
