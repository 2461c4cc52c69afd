//! The running summary of the consumption CSV: constant memory whatever the number of rows.
//!
//! The CSV rules, the same in the JavaScript and Python twins (`guest/js/examples/csv-summary.js`,
//! `guest/python/examples/csv_summary.py`), so that the three print the same for any input:
//!
//! - One record per line; trailing `\r`s are dropped, and a UTF-8 byte order mark before the header.
//!   Lines that are empty or only spaces and tabs are ignored.
//! - Fields are separated by commas (RFC 4180). A field whose first character after any spaces or tabs
//!   is `"` is quoted: it ends at the next lone `"`, `""` inside it stands for one `"`, commas inside it
//!   are data, and only spaces or tabs may follow it. Other fields are trimmed of spaces and tabs and
//!   may not contain `"`. A quoted field cannot span lines: a quote still open at the end of a line
//!   makes that line malformed, and the lines after it are read as records of their own.
//! - `num_meters` is ASCII digits (at most `u64::MAX`); the kWh columns are ASCII digits with an
//!   optional fraction and exponent (`12`, `12.5`, `.5`, `1e3`) and must be finite. There is no sign, so
//!   negative numbers, `NaN` and `inf` are refused. The median column is not read.
//! - A row that breaks a rule, or lacks a column, is malformed: skipped and counted.

use std::fmt;

/// How many postcodes the "top" table lists.
const TOP: usize = 5;

/// One postcode, as kept for the top table.
#[derive(Debug, Clone)]
struct Row {
    postcode: String,
    meters: u64,
    total_kwh: f64,
}

/// Column positions, found by name in the header.
#[derive(Debug)]
struct Columns {
    postcode: usize,
    meters: usize,
    total: usize,
    mean: usize,
}

/// Totals so far, and the top postcodes by total consumption.
#[derive(Debug)]
pub struct Summary {
    columns: Columns,
    postcodes: u64,
    /// Exact: the sum of many `u64`s.
    meters: u128,
    total_kwh: f64,
    sum_of_means: f64,
    skipped: u64,
    top: Vec<Row>,
}

impl Summary {
    /// Start a summary for a CSV with this header line.
    pub fn new(header: &str) -> Result<Self, String> {
        let header = header.trim_end_matches('\r');
        let header = header.strip_prefix('\u{feff}').unwrap_or(header);
        let names =
            split(header).ok_or("the CSV header line is malformed (a stray or unclosed quote)")?;
        let find = |name: &str| {
            names.iter().position(|n| n == name).ok_or_else(|| {
                format!(
                    "the CSV header has no `{name}` column (columns: {})",
                    names.join(", ")
                )
            })
        };
        Ok(Summary {
            columns: Columns {
                postcode: find("postcode")?,
                meters: find("num_meters")?,
                total: find("total_consumption_kwh")?,
                mean: find("mean_consumption_kwh")?,
            },
            postcodes: 0,
            meters: 0,
            total_kwh: 0.0,
            sum_of_means: 0.0,
            skipped: 0,
            top: Vec::with_capacity(TOP + 1),
        })
    }

    /// Add one data line. Blank lines are ignored; malformed ones are counted as skipped.
    pub fn add(&mut self, line: &str) {
        let line = line.trim_end_matches('\r');
        if line.trim_matches(BLANK).is_empty() {
            return;
        }
        match self.parse(line) {
            Some((row, mean)) => {
                self.postcodes += 1;
                self.meters += u128::from(row.meters);
                self.total_kwh += row.total_kwh;
                self.sum_of_means += mean;
                self.push_top(row);
            }
            None => self.skipped += 1,
        }
    }

    fn parse(&self, line: &str) -> Option<(Row, f64)> {
        let fields = split(line)?;
        let c = &self.columns;
        let row = Row {
            postcode: fields.get(c.postcode)?.clone(),
            meters: meters(fields.get(c.meters)?)?,
            total_kwh: kwh(fields.get(c.total)?)?,
        };
        let mean = kwh(fields.get(c.mean)?)?;
        Some((row, mean))
    }

    /// Keep `top` sorted by total, largest first, and at most `TOP` long.
    fn push_top(&mut self, row: Row) {
        if self.top.len() == TOP
            && self
                .top
                .last()
                .is_some_and(|last| last.total_kwh >= row.total_kwh)
        {
            return;
        }
        let at = self.top.partition_point(|r| r.total_kwh >= row.total_kwh);
        self.top.insert(at, row);
        self.top.truncate(TOP);
    }
}

/// What is trimmed around fields.
const BLANK: [char; 2] = [' ', '\t'];

/// The fields of one CSV line, or `None` if it is malformed (the rules are at the top).
fn split(line: &str) -> Option<Vec<String>> {
    let mut fields = Vec::new();
    let mut rest = line;
    loop {
        let (field, after) =
            if let Some(mut quoted) = rest.trim_start_matches(BLANK).strip_prefix('"') {
                let mut field = String::new();
                loop {
                    let end = quoted.find('"')?;
                    field.push_str(&quoted[..end]);
                    quoted = &quoted[end + 1..];
                    match quoted.strip_prefix('"') {
                        Some(more) => {
                            field.push('"');
                            quoted = more;
                        }
                        None => break,
                    }
                }
                (field, quoted.trim_start_matches(BLANK))
            } else {
                let end = rest.find(',').unwrap_or(rest.len());
                let field = rest[..end].trim_matches(BLANK);
                if field.contains('"') {
                    return None;
                }
                (field.to_owned(), &rest[end..])
            };
        fields.push(field);
        if after.is_empty() {
            return Some(fields);
        }
        rest = after.strip_prefix(',')?;
    }
}

/// A meter count: ASCII digits, at most `u64::MAX`.
fn meters(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// A kWh figure: ASCII digits with an optional fraction and exponent, finite; no sign.
fn kwh(s: &str) -> Option<f64> {
    let b = s.as_bytes();
    let mut i = 0;
    let digits = |i: &mut usize| {
        let from = *i;
        while b.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
        *i - from
    };
    let mut mantissa = digits(&mut i);
    if b.get(i) == Some(&b'.') {
        i += 1;
        mantissa += digits(&mut i);
    }
    if mantissa == 0 {
        return None;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return None;
        }
    }
    if i != b.len() {
        return None;
    }
    s.parse().ok().filter(|x: &f64| x.is_finite())
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mean_of_means = if self.postcodes == 0 {
            0.0
        } else {
            self.sum_of_means / self.postcodes as f64
        };
        writeln!(f, "postcodes:          {}", self.postcodes)?;
        writeln!(f, "meters:             {}", self.meters)?;
        writeln!(f, "total kWh:          {:.1}", self.total_kwh)?;
        writeln!(f, "mean of means kWh:  {mean_of_means:.1}")?;
        if self.skipped > 0 {
            writeln!(f, "malformed rows:     {} (skipped)", self.skipped)?;
        }
        writeln!(f)?;
        writeln!(f, "top {TOP} postcodes by total consumption:")?;
        writeln!(
            f,
            "{:>4}  {:<10} {:>8} {:>16}",
            "rank", "postcode", "meters", "total kWh"
        )?;
        for (rank, row) in self.top.iter().enumerate() {
            writeln!(
                f,
                "{:>4}  {:<10} {:>8} {:>16.1}",
                rank + 1,
                row.postcode,
                row.meters,
                row.total_kwh
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str =
        "postcode,num_meters,total_consumption_kwh,mean_consumption_kwh,median_consumption_kwh";

    #[test]
    fn sums_and_ranks() {
        let mut s = Summary::new(HEADER).expect("header");
        for i in 0..10u64 {
            s.add(&format!("P{i},{i},{}.5,{i}.0,1.0\r", i * 100));
        }
        s.add("");
        s.add("bad,row");
        assert_eq!(s.postcodes, 10);
        assert_eq!(s.meters, 45);
        assert_eq!(s.skipped, 1);
        let top: Vec<&str> = s.top.iter().map(|r| r.postcode.as_str()).collect();
        assert_eq!(top, ["P9", "P8", "P7", "P6", "P5"]);
    }

    #[test]
    fn missing_column_is_an_error() {
        assert!(Summary::new("postcode,num_meters").is_err());
        assert!(Summary::new("\"postcode,num_meters").is_err());
    }

    #[test]
    fn quoted_header_after_a_bom() {
        let s = Summary::new(&format!("\u{feff}\"postcode\", {}\r", &HEADER[9..])).expect("header");
        assert_eq!((s.columns.postcode, s.columns.mean), (0, 3));
    }

    #[test]
    fn splits_rfc_4180_lines() {
        let ok = |line: &str| split(line).expect(line);
        assert_eq!(ok("a, b ,"), ["a", "b", ""]);
        assert_eq!(ok("\"Leeds, LS1\",1"), ["Leeds, LS1", "1"]);
        assert_eq!(ok(" \"say \"\"hi\"\"\" \t,\"\""), ["say \"hi\"", ""]);
        assert_eq!(ok("\" x \""), [" x "]);
        for bad in ["\"open", "\"a\" b,1", "a\"b,1", "\"a\"\"", "1,\"a\"x"] {
            assert_eq!(split(bad), None, "{bad}");
        }
    }

    #[test]
    fn numbers_are_unsigned_and_finite() {
        for (s, want) in [
            ("12", 12.0),
            ("12.5", 12.5),
            (".5", 0.5),
            ("5.", 5.0),
            ("1E+2", 100.0),
        ] {
            assert_eq!(kwh(s), Some(want), "{s}");
        }
        for bad in [
            "", ".", "-1", "-0", "+1", "NaN", "inf", "Infinity", "1e999", "1e", "0x10", "1_0", " 1",
        ] {
            assert_eq!(kwh(bad), None, "{bad}");
        }
        assert_eq!(meters("18446744073709551615"), Some(u64::MAX));
        for bad in ["", "-2", "+5", "1.0", "1e2", "18446744073709551616"] {
            assert_eq!(meters(bad), None, "{bad}");
        }
    }
}
