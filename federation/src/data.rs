//! The data provider's deterministic data: pure functions of their inputs, the same bytes every time.
//!
//! The consumption dataset mimics the BEIS postcode-level electricity statistics; row `i` is a pure
//! function of `i`, so any number of rows can be streamed in constant memory with an exact length.

use std::fmt::Write as _;
use std::sync::OnceLock;

use bytes::Bytes;
use sha2::{Digest as _, Sha256};

/// Rows in `/consumption.csv` and `/consumption.json` without `?rows=`.
pub const DEFAULT_ROWS: u64 = 500;

/// The CSV header line, newline included.
pub const CSV_HEADER: &str =
    "postcode,num_meters,total_consumption_kwh,mean_consumption_kwh,median_consumption_kwh\n";

/// `/consumption-edge-cases.csv`: the same columns as `/consumption.csv`, with the input that CSV
/// readers disagree on (a byte order mark, quoted fields, `""`, a quoted field spanning two lines,
/// `NaN`, `inf`, negative and out-of-range numbers, blank lines, `\r\r\n`, no final newline).
pub const EDGE_CASES_CSV: &str = concat!(
    "\u{feff}\"postcode\",num_meters,total_consumption_kwh,mean_consumption_kwh,median_consumption_kwh\r\n",
    "\"AB1 2CD\",12,2500.5,208.4,200.0\r\n",
    "\"Leeds, LS1\",3,1999.9,33.3,30.0\n",
    "\"Say \"\"hi\"\"\",1,5e2,500,500\n",
    "  SP1 1AA  , 7 , 170.25 , 10.0 ,1\n",
    " \"\u{1f600} 9ZZ\" \t,18446744073709551615,750.75,.75,1\n",
    "TIE 1AA,2,170.25,85.125,85,extra,\n",
    "\n",
    "  \t \n",
    "NAN 1,1,NaN,1.0,1.0\n",
    "INF 1,1,inf,1.0,1.0\n",
    "INF 2,1,1e999,1.0,1.0\n",
    "INF 3,1,1.0,Infinity,1.0\n",
    "NEG 1,-2,10.0,5.0,5.0\n",
    "NEG 2,2,-10.0,5.0,5.0\n",
    "NEG 3,2,1.0,-0,5.0\n",
    "BIG 1,18446744073709551616,1.0,1.0,1.0\n",
    "PLUS 1,+5,1.0,1.0,1.0\n",
    "HEX 1,0x10,1.0,1.0,1.0\n",
    "UND 1,1_000,1.0,1.0,1.0\n",
    "FRAC 1,1.0,1.0,1.0,1.0\n",
    "EMPTY 1,,1.0,1.0,1.0\n",
    "SHORT 1,1,1.0\n",
    ",,,,\n",
    "\"MULTI\n",
    "LINE\",1,1.0,1.0,1.0\n",
    "\"AB\" C,1,1.0,1.0,1.0\n",
    "AB\"C,1,1.0,1.0,1.0\n",
    "\"OPEN,1,1.0,1.0,1.0\n",
    "CR 2,4,10.0,2.5,2.5\r\r\n",
    "LAST 1,1,0.05,0.05,n/a",
);

/// Size of the chunks streamed for large bodies.
pub const CHUNK: usize = 64 * 1024;

const AREAS: [&str; 60] = [
    "AB", "AL", "B", "BA", "BB", "BD", "BH", "BL", "BN", "BR", "BS", "CA", "CB", "CF", "CH", "CM",
    "CO", "CR", "CT", "CV", "CW", "DA", "DD", "DE", "DH", "DL", "DN", "DT", "E", "EH", "EX", "G",
    "GL", "GU", "HA", "HD", "HP", "HU", "IP", "KT", "L", "LE", "LS", "M", "ME", "MK", "N", "NE",
    "NG", "NR", "OX", "PE", "PL", "PO", "RG", "S", "SE", "SO", "TN", "YO",
];
const UNIT_LETTERS: &[u8; 20] = b"ABDEFGHJLNPQRSTUWXYZ";
const DISTRICTS: u64 = 20;
const SECTORS: u64 = 10;

/// SplitMix64: a tiny, well-mixed, deterministic generator step.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One row of the consumption dataset. Consumption figures are in tenths of a kWh.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    /// A plausible UK postcode, e.g. "AB10 1AA".
    pub postcode: String,
    /// Number of meters in the postcode.
    pub num_meters: u64,
    /// Total consumption, tenths of kWh.
    pub total_tenths: u64,
    /// Mean consumption per meter, tenths of kWh.
    pub mean_tenths: u64,
    /// Median consumption per meter, tenths of kWh.
    pub median_tenths: u64,
}

/// Row `i` of the dataset. Postcodes are distinct for the first 9.6 million rows.
pub fn row(i: u64) -> Row {
    let areas = AREAS.len() as u64;
    let cell = areas * DISTRICTS * SECTORS;
    let area = AREAS[(i % areas) as usize];
    let district = 1 + (i / areas) % DISTRICTS;
    let sector = (i / (areas * DISTRICTS)) % SECTORS;
    let unit = (i / cell + mix(i % cell)) % 400;
    let postcode = format!(
        "{area}{district} {sector}{}{}",
        UNIT_LETTERS[(unit / 20) as usize] as char,
        UNIT_LETTERS[(unit % 20) as usize] as char
    );
    let h = mix(i ^ 0x0E7E_46D5_EED0_0001);
    let num_meters = 3 + h % 60;
    let mean_tenths = 15_000 + (h >> 8) % 40_000;
    let median_tenths = mean_tenths * (80 + (h >> 24) % 19) / 100;
    Row {
        postcode,
        num_meters,
        total_tenths: mean_tenths * num_meters,
        mean_tenths,
        median_tenths,
    }
}

fn digits(mut n: u64) -> u64 {
    let mut d = 1;
    while n >= 10 {
        n /= 10;
        d += 1;
    }
    d
}

fn tenths(out: &mut String, t: u64) {
    let _ = write!(out, "{}.{}", t / 10, t % 10);
}

fn tenths_len(t: u64) -> u64 {
    digits(t / 10) + 2
}

/// Append row `i` as a CSV line (newline included).
pub fn push_csv_line(out: &mut String, i: u64) {
    let r = row(i);
    let _ = write!(out, "{},{},", r.postcode, r.num_meters);
    tenths(out, r.total_tenths);
    out.push(',');
    tenths(out, r.mean_tenths);
    out.push(',');
    tenths(out, r.median_tenths);
    out.push('\n');
}

fn csv_line_len(i: u64) -> u64 {
    let r = row(i);
    r.postcode.len() as u64
        + digits(r.num_meters)
        + tenths_len(r.total_tenths)
        + tenths_len(r.mean_tenths)
        + tenths_len(r.median_tenths)
        + 5
}

/// Exact byte length of the CSV with `rows` rows (header included). O(rows), no allocation per row
/// beyond the postcode.
pub fn csv_len(rows: u64) -> u64 {
    CSV_HEADER.len() as u64 + (0..rows).map(csv_line_len).sum::<u64>()
}

/// The whole CSV with `rows` rows, in memory (for small `rows`).
pub fn csv(rows: u64) -> String {
    let mut out = String::from(CSV_HEADER);
    (0..rows).for_each(|i| push_csv_line(&mut out, i));
    out
}

/// The chunk of the streamed CSV that starts at row `from` (the header precedes row 0); returns the
/// chunk and the next row. Each chunk is at least [`CHUNK`] bytes unless it reaches `rows`.
pub fn csv_chunk(from: u64, rows: u64) -> (Bytes, u64) {
    let mut out = String::with_capacity(CHUNK + 128);
    if from == 0 {
        out.push_str(CSV_HEADER);
    }
    let mut i = from;
    while i < rows && out.len() < CHUNK {
        push_csv_line(&mut out, i);
        i += 1;
    }
    (Bytes::from(out), i)
}

/// The same rows as a JSON array of objects (numbers in kWh with one decimal).
pub fn json(rows: u64) -> String {
    let mut out = String::from("[");
    for i in 0..rows {
        let r = row(i);
        if i > 0 {
            out.push(',');
        }
        let _ = write!(
            out,
            "{{\"postcode\":\"{}\",\"num_meters\":{},\"total_consumption_kwh\":",
            r.postcode, r.num_meters
        );
        tenths(&mut out, r.total_tenths);
        out.push_str(",\"mean_consumption_kwh\":");
        tenths(&mut out, r.mean_tenths);
        out.push_str(",\"median_consumption_kwh\":");
        tenths(&mut out, r.median_tenths);
        out.push('}');
    }
    out.push(']');
    out
}

fn pattern() -> &'static [u8] {
    static PATTERN: OnceLock<Vec<u8>> = OnceLock::new();
    PATTERN.get_or_init(|| {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
        (0..CHUNK as u64)
            .map(|k| {
                if k % 64 == 63 {
                    b'\n'
                } else {
                    ALPHABET[(mix(k) % ALPHABET.len() as u64) as usize]
                }
            })
            .collect()
    })
}

/// Chunk `k` of the `/sized?bytes=total` body: a fixed 64 KiB pattern whose first 16 bytes carry
/// the chunk number in hex, cut at `total`.
pub fn sized_chunk(k: u64, total: u64) -> Bytes {
    let start = k.saturating_mul(CHUNK as u64);
    let len = total.saturating_sub(start).min(CHUNK as u64) as usize;
    let mut chunk = pattern()[..len].to_vec();
    let label = format!("{k:015x}\n");
    let n = label.len().min(len);
    chunk[..n].copy_from_slice(&label.as_bytes()[..n]);
    Bytes::from(chunk)
}

/// The small JSON document of `/items/{id}`.
pub fn item(id: &str) -> serde_json::Value {
    let digest = Sha256::digest(format!("item:{id}").as_bytes());
    let seed = u64::from_be_bytes(digest[..8].try_into().unwrap_or_default());
    let r = row(seed % 1_000_000);
    serde_json::json!({
        "id": id,
        "postcode": r.postcode,
        "num_meters": r.num_meters,
        "mean_consumption_kwh_tenths": r.mean_tenths,
        "digest": digest.iter().fold(String::new(), |mut s, b| { let _ = write!(s, "{b:02x}"); s }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_len_matches_formatting() {
        for rows in [0, 1, 7, 500, 5000] {
            assert_eq!(csv(rows).len() as u64, csv_len(rows), "rows={rows}");
        }
    }

    #[test]
    fn chunks_concatenate_to_csv() {
        let rows = 3000;
        let mut all = Vec::new();
        let mut from = 0;
        while from < rows || all.is_empty() {
            let (c, next) = csv_chunk(from, rows);
            all.extend_from_slice(&c);
            from = next;
        }
        assert_eq!(all, csv(rows).into_bytes());
    }

    #[test]
    fn postcodes_are_distinct_and_plausible() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..20_000 {
            let p = row(i).postcode;
            let (out, inw) = p.split_once(' ').expect("space");
            assert!((2..=4).contains(&out.len()) && inw.len() == 3, "{p}");
            assert!(seen.insert(p));
        }
    }

    #[test]
    fn sized_chunks_have_exact_lengths() {
        let total = 3 * CHUNK as u64 + 17;
        let sum: usize = (0..4).map(|k| sized_chunk(k, total).len()).sum();
        assert_eq!(sum as u64, total);
        assert_eq!(sized_chunk(0, 5).as_ref(), b"00000");
        assert_eq!(item("42"), item("42"));
        assert_ne!(item("42"), item("43"));
    }

    #[test]
    fn json_parses_and_matches_rows() {
        let v: serde_json::Value = serde_json::from_str(&json(10)).expect("json");
        assert_eq!(v.as_array().map(Vec::len), Some(10));
        assert_eq!(v[3]["postcode"], row(3).postcode);
    }
}
