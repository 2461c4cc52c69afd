//! CSV to JSON, streaming: lines are split as bytes arrive, each one checked for UTF-8.
//!
//! Fields are split on commas; a field may be wrapped in double quotes (with `""` for a quote) to hold a
//! comma. A quoted field cannot span lines.

use std::io::{BufRead, BufReader, Read};

/// Bytes asked of the host per read.
const READ_CHUNK: usize = 64 * 1024;

/// Convert the CSV read from `body` into a JSON array of objects with string values.
pub fn to_json(body: impl Read) -> Result<Vec<u8>, String> {
    let mut reader = BufReader::with_capacity(READ_CHUNK, body);
    let mut line = Vec::new();
    let mut number = 0usize;
    let mut header: Option<Vec<String>> = None;
    let mut out = Vec::from(&b"["[..]);
    let mut rows = 0usize;
    loop {
        line.clear();
        if reader
            .read_until(b'\n', &mut line)
            .map_err(|e| format!("reading the body: {e}"))?
            == 0
        {
            break;
        }
        number += 1;
        let text = std::str::from_utf8(&line)
            .map_err(|e| format!("the body is not UTF-8 (line {number}: {e})"))?
            .trim_end_matches(['\n', '\r']);
        if text.is_empty() {
            continue;
        }
        let fields = split(text).map_err(|e| format!("line {number}: {e}"))?;
        let Some(names) = &header else {
            header = Some(fields);
            continue;
        };
        if fields.len() != names.len() {
            return Err(format!(
                "line {number} has {} fields, the header has {}",
                fields.len(),
                names.len()
            ));
        }
        out.extend_from_slice(if rows == 0 { b"{" } else { b",\n{" });
        for (i, (name, value)) in names.iter().zip(&fields).enumerate() {
            if i > 0 {
                out.push(b',');
            }
            push_json_string(&mut out, name);
            out.push(b':');
            push_json_string(&mut out, value);
        }
        out.push(b'}');
        rows += 1;
    }
    if header.is_none() {
        return Err("empty body: expected a CSV header".into());
    }
    out.extend_from_slice(b"]\n");
    Ok(out)
}

/// Split one line into fields.
fn split(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                    None => return Err("unterminated quoted field".into()),
                }
            }
            if !matches!(chars.peek(), None | Some(',')) {
                return Err("text after a closing quote".into());
            }
        } else {
            while let Some(c) = chars.next_if(|c| *c != ',') {
                field.push(c);
            }
        }
        fields.push(field);
        if chars.next().is_none() {
            return Ok(fields);
        }
    }
}

/// Append `s` as a JSON string literal.
fn push_json_string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            c if u32::from(c) < 0x20 => {
                out.extend_from_slice(format!("\\u{:04x}", u32::from(c)).as_bytes())
            }
            c => {
                let mut buf = [0; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_rows() {
        let csv = "a,b\r\n1,\"x, \"\"y\"\"\"\n\n2,z\n";
        let json = to_json(csv.as_bytes()).expect("valid CSV");
        assert_eq!(
            String::from_utf8(json).expect("UTF-8"),
            "[{\"a\":\"1\",\"b\":\"x, \\\"y\\\"\"},\n{\"a\":\"2\",\"b\":\"z\"}]\n"
        );
    }

    #[test]
    fn rejects_non_utf8_and_ragged_rows() {
        let err = to_json(&b"a\n\xff\n"[..]).expect_err("not UTF-8");
        assert!(err.contains("not UTF-8"), "{err}");
        let err = to_json(&b"a,b\n1\n"[..]).expect_err("ragged");
        assert!(err.contains("line 2"), "{err}");
    }
}
