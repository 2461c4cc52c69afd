//! The batch input: one URL per line, or JSON lines `{url, method, headers, body, name}`.
//!
//! Blank lines and lines starting with `#` are skipped. Every other line is an item and gets the
//! next index (0-based), bad or not, so that `--shard K/N` splits a file the same way whatever its
//! errors are.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::fs::File;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::Method;

use super::naming;
use crate::client::parse_header;

/// One item to fetch.
#[derive(Clone, Debug)]
pub struct Item {
    /// Line number in the input (1-based).
    pub line: u64,
    /// Position among the input's items (0-based; blank and comment lines excluded).
    pub index: u64,
    /// The URL.
    pub url: url::Url,
    /// The method (default GET).
    pub method: Method,
    /// Extra headers, validated (never Authorization or x-fapi-*).
    pub headers: http::HeaderMap,
    /// Request body.
    pub body: Option<Bytes>,
    /// Output file name in the output directory.
    pub name: String,
}

/// A line that is not a usable item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadLine {
    /// Line number in the input (1-based).
    pub line: u64,
    /// Position among the input's items (0-based).
    pub index: u64,
    /// What is wrong with it.
    pub message: String,
}

impl fmt::Display for BadLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// A parsed input: its items and its bad lines, each in input order.
///
/// Every line is validated up front (so a bad line stops the batch before it starts), but items
/// are not kept: [`Input::items`] reads the source again and materialises each item when it is
/// needed. An input read from a file ([`Input::open`]) is read twice and never held, so memory
/// stays flat whatever the item count (about 10 bytes per item while the first pass checks names
/// for duplicates, freed after it); text given whole ([`Input::parse`], stdin) is kept as it is.
#[derive(Clone, Debug, Default)]
pub struct Input {
    source: Source,
    /// Lines that are items, bad or not (the next index).
    indexes: u64,
    /// The indexes of repeated URLs, whose default name gets `-INDEX` (ascending).
    renamed: Vec<u64>,
    /// Only the items of this shard.
    shard: Option<Shard>,
    /// Set when the file no longer reads as it did when it was checked.
    changed: Arc<AtomicBool>,
    /// The lines that are not usable items.
    pub bad: Vec<BadLine>,
}

#[derive(Clone, Debug)]
enum Source {
    Text(String),
    /// A file, with its length and modification time when it was checked.
    File {
        path: PathBuf,
        len: u64,
        modified: Option<std::time::SystemTime>,
    },
}

impl Default for Source {
    fn default() -> Self {
        Source::Text(String::new())
    }
}

fn name_hash(name: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    name.hash(&mut h);
    h.finish()
}

/// Numbered lines (1-based); a read error ends them with `Err`.
type Lines<'a> = Box<dyn Iterator<Item = std::io::Result<(u64, String)>> + Send + 'a>;

/// The lines of a source, each with its 1-based number; a read error ends them with `Err`.
fn lines(source: &Source) -> std::io::Result<Lines<'_>> {
    Ok(match source {
        Source::Text(text) => Box::new(
            text.lines()
                .enumerate()
                .map(|(n, l)| Ok((n as u64 + 1, l.to_owned()))),
        ),
        Source::File { path, .. } => {
            let reader = BufReader::new(File::open(path)?);
            Box::new(
                reader
                    .lines()
                    .enumerate()
                    .map(|(n, l)| l.map(|l| (n as u64 + 1, l))),
            )
        }
    })
}

/// `--shard K/N`: only the items whose index modulo N is K.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    /// This shard, 0-based (K < N).
    pub k: u64,
    /// The number of shards.
    pub n: u64,
}

impl Shard {
    /// Whether the item at `index` belongs to this shard.
    pub fn contains(&self, index: u64) -> bool {
        index % self.n == self.k
    }
}

impl FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> Result<Shard, String> {
        let (k, n) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?}: write the shard as K/N, e.g. 0/4"))?;
        let k: u64 = k
            .trim()
            .parse()
            .map_err(|_| format!("{s:?}: K is not a number"))?;
        let n: u64 = n
            .trim()
            .parse()
            .map_err(|_| format!("{s:?}: N is not a number"))?;
        if n == 0 || k >= n {
            return Err(format!("{s:?}: need 0 <= K < N"));
        }
        Ok(Shard { k, n })
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonLine {
    url: String,
    method: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    body: Option<String>,
    name: Option<String>,
}

impl Input {
    /// Parse the text of an input file (kept in memory; for a file, [`Input::open`] is lighter).
    pub fn parse(text: &str) -> Input {
        Input::check(Source::Text(text.to_owned())).expect("text cannot fail to read")
    }

    /// Check the input file at `path`, line by line, without keeping it: [`Input::items`] reads
    /// it again. Fails when it cannot be read or is not UTF-8 (the error names the line).
    pub fn open(path: &Path) -> std::io::Result<Input> {
        let meta = std::fs::metadata(path)?;
        Input::check(Source::File {
            path: path.to_owned(),
            len: meta.len(),
            modified: meta.modified().ok(),
        })
    }

    fn check(source: Source) -> std::io::Result<Input> {
        let mut input = Input::default();
        // Names seen so far, by hash. Dropped after the check.
        let mut names: HashSet<u64> = HashSet::new();
        let mut index = 0u64;
        let mut last = 0u64;
        for next in lines(&source)? {
            let (line, raw) =
                next.map_err(|e| std::io::Error::new(e.kind(), format!("line {}: {e}", last + 1)))?;
            last = line;
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            match parse_line(trimmed, line, index) {
                Ok(item) => {
                    if !names.insert(name_hash(&item.name)) {
                        if item_named_by_input(trimmed) {
                            let first = first_line_named(&source, &item.name).unwrap_or(0);
                            input.bad.push(BadLine {
                                line,
                                index,
                                message: format!(
                                    "the name {:?} is already used by line {first}",
                                    item.name
                                ),
                            });
                            index += 1;
                            continue;
                        }
                        // The same URL twice: a stable, distinct name for the repeat.
                        input.renamed.push(index);
                        names.insert(name_hash(&renamed_name(&item.name, index)));
                    }
                }
                Err(message) => input.bad.push(BadLine {
                    line,
                    index,
                    message,
                }),
            }
            index += 1;
        }
        input.indexes = index;
        input.source = source;
        Ok(input)
    }

    /// The number of usable items (of the shard, if any).
    pub fn len(&self) -> usize {
        let in_shard = match self.shard {
            None => self.indexes,
            Some(s) if self.indexes > s.k => (self.indexes - s.k).div_ceil(s.n),
            Some(_) => 0,
        };
        (in_shard - self.bad.len() as u64) as usize
    }

    /// Whether there is no usable item.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The usable items, in input order, each materialised on demand from the source. If a file
    /// no longer reads as it did when checked, the items end there and [`Input::changed`] says so.
    pub fn items(&self) -> impl Iterator<Item = Item> + '_ {
        let changed = &self.changed;
        let fail = move || {
            changed.store(true, Ordering::Relaxed);
        };
        if let Source::File {
            path,
            len,
            modified,
        } = &self.source
        {
            let now = std::fs::metadata(path).map(|m| (m.len(), m.modified().ok()));
            if now.ok() != Some((*len, *modified)) {
                fail();
            }
        }
        let lines = match lines(&self.source) {
            Ok(lines) => Some(lines),
            Err(_) => {
                fail();
                None
            }
        };
        let mut bad = self.bad.iter().map(|b| b.index).peekable();
        let mut renamed = self.renamed.iter().copied().peekable();
        let mut index = 0u64;
        lines
            .into_iter()
            .flatten()
            .map_while(move |next| {
                let Ok((line, raw)) = next else {
                    fail();
                    return None;
                };
                Some((line, raw))
            })
            .filter_map(move |(line, raw)| {
                let trimmed = raw.trim();
                if trimmed.is_empty() || trimmed.starts_with('#') {
                    return None;
                }
                let i = index;
                index += 1;
                if bad.next_if_eq(&i).is_some() {
                    return None;
                }
                let rename = renamed.next_if_eq(&i).is_some();
                if self.shard.is_some_and(|s| !s.contains(i)) {
                    return None;
                }
                match parse_line(trimmed, line, i) {
                    Ok(mut item) => {
                        if rename {
                            item.name = renamed_name(&item.name, i);
                        }
                        Some(item)
                    }
                    Err(_) => {
                        fail();
                        None
                    }
                }
            })
            .take_while(|_| !self.changed.load(Ordering::Relaxed))
    }

    /// Whether the input file changed after it was checked (its items then ended early).
    pub fn changed(&self) -> bool {
        self.changed.load(Ordering::Relaxed)
    }

    /// Keep only the items and bad lines of `shard`.
    pub fn shard(mut self, shard: Shard) -> Input {
        self.shard = Some(shard);
        self.bad.retain(|b| shard.contains(b.index));
        self
    }
}

/// The name of the repeat at `index` of an earlier item's URL.
fn renamed_name(name: &str, index: u64) -> String {
    format!("{name}-{index}")
}

/// The first line whose item is named `name` (for the message about a duplicate).
fn first_line_named(source: &Source, name: &str) -> Option<u64> {
    let mut index = 0u64;
    for next in lines(source).ok()? {
        let (line, raw) = next.ok()?;
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if parse_line(trimmed, line, index).is_ok_and(|i| i.name == name) {
            return Some(line);
        }
        index += 1;
    }
    None
}

fn item_named_by_input(line: &str) -> bool {
    line.starts_with('{')
}

fn parse_line(line: &str, number: u64, index: u64) -> Result<Item, String> {
    let (url, method, headers, body, name) = if line.starts_with('{') {
        let j: JsonLine =
            serde_json::from_str(line).map_err(|e| format!("not a valid JSON item ({e})"))?;
        (j.url, j.method, j.headers, j.body, j.name)
    } else {
        if line.contains(char::is_whitespace) {
            return Err("a URL line must be one URL without spaces (or a JSON object)".into());
        }
        (line.to_owned(), None, BTreeMap::new(), None, None)
    };
    let url = url::Url::parse(&url).map_err(|e| format!("not a URL ({e})"))?;
    if url.scheme() != "https" {
        return Err("only https URLs can be fetched".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("URLs with user information are refused".into());
    }
    let method = match method {
        None => Method::GET,
        Some(m) => crate::policy::check_method(&m)?,
    };
    let mut map = http::HeaderMap::new();
    for (n, v) in &headers {
        let (n, v) = parse_header(n, v).map_err(|e| e.to_string())?;
        map.append(n, v);
    }
    let name = match name {
        Some(n) => {
            naming::check_name(&n)?;
            n
        }
        None => naming::default_name(&url),
    };
    Ok(Item {
        line: number,
        index,
        url,
        method,
        headers: map,
        body: body.map(Bytes::from),
        name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_json_comments_and_blanks() {
        let text = "# a comment\n\nhttps://h/items/1\n  \n{\"url\":\"https://h/up\",\"method\":\"post\",\"headers\":{\"Accept\":\"text/csv\"},\"body\":\"x=1\",\"name\":\"up.json\"}\n   # indented comment\nhttps://h/items/2\n";
        let input = Input::parse(text);
        assert!(input.bad.is_empty(), "{:?}", input.bad);
        let lines: Vec<_> = input.items().map(|i| (i.line, i.index)).collect();
        assert_eq!(lines, vec![(3, 0), (5, 1), (7, 2)]);
        let items: Vec<Item> = input.items().collect();
        let post = &items[1];
        assert_eq!(post.method, Method::POST);
        assert_eq!(post.name, "up.json");
        assert_eq!(post.body.as_deref(), Some(&b"x=1"[..]));
        assert_eq!(
            post.headers.get("accept").map(|v| v.as_bytes()),
            Some(&b"text/csv"[..])
        );
        assert_eq!(items[0].name, naming::default_name(&items[0].url));
    }

    #[test]
    fn bad_lines_have_line_numbers() {
        let text = "https://h/ok\nnot a url\nhttp://h/plain\n{\"url\":\"https://h/x\",\"color\":1}\n{\"url\":\"https://h/y\",\"headers\":{\"Authorization\":\"Bearer x\"}}\n{\"url\":\"https://h/z\",\"name\":\"../evil\"}\n{\"url\":\"https://u:p@h/\"}\n{\"url\":\"https://h/a\",\"name\":\"dup\"}\n{\"url\":\"https://h/b\",\"name\":\"dup\"}\n{\"url\":\"https://h/m\",\"method\":\"BREW\"}\n";
        let input = Input::parse(text);
        let bad: Vec<u64> = input.bad.iter().map(|b| b.line).collect();
        assert_eq!(bad, vec![2, 3, 4, 5, 6, 7, 9, 10], "{:#?}", input.bad);
        assert_eq!(input.len(), 2);
        assert!(
            input.bad[3].message.contains("authorization"),
            "{}",
            input.bad[3]
        );
        assert!(input.bad[6].message.contains("line 8"), "{}", input.bad[6]);
        assert!(input.bad[0].to_string().starts_with("line 2: "));
        // Bad lines keep their index: the indexes of all lines are 0..10.
        let mut all: Vec<u64> = input.items().map(|i| i.index).collect();
        all.extend(input.bad.iter().map(|b| b.index));
        all.sort();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn repeated_urls_get_distinct_stable_names() {
        let input = Input::parse("https://h/a\nhttps://h/a\n");
        assert!(input.bad.is_empty());
        let items: Vec<Item> = input.items().collect();
        assert_ne!(items[0].name, items[1].name);
        assert_eq!(
            items[1].name,
            Input::parse("https://h/a\nhttps://h/a\n")
                .items()
                .nth(1)
                .expect("two")
                .name
        );
    }

    #[test]
    fn shards_split_exactly() {
        assert_eq!("1/4".parse::<Shard>(), Ok(Shard { k: 1, n: 4 }));
        for bad in ["4/4", "1", "a/2", "0/0"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
        let text: String = (0..103).map(|i| format!("https://h/items/{i}\n")).collect();
        let mut seen = Vec::new();
        for k in 0..4 {
            let part = Input::parse(&text).shard(Shard { k, n: 4 });
            seen.extend(part.items().map(|i| i.index));
        }
        seen.sort();
        assert_eq!(seen, (0..103).collect::<Vec<_>>());
    }

    #[test]
    fn a_file_is_read_twice_and_gives_what_its_text_gives() {
        let text = "# c\nhttps://h/a\nnot a url\nhttps://h/a\n\n{\"url\":\"https://h/b\",\"name\":\"b\"}\nhttps://h/c\n";
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("in.txt");
        std::fs::write(&path, text).expect("write");
        let file = Input::open(&path).expect("open");
        let mem = Input::parse(text);
        assert_eq!(file.bad, mem.bad);
        assert_eq!(file.len(), 4);
        let names = |i: &Input| {
            i.items()
                .map(|i| (i.line, i.index, i.name))
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&file), names(&mem));
        assert_eq!(names(&file).len(), file.len());
        for k in 0..3 {
            let part = Input::open(&path).expect("open").shard(Shard { k, n: 3 });
            assert_eq!(part.items().count(), part.len(), "shard {k}");
        }
        assert!(!file.changed());
        // The file changes after the check: its items end, and the input says so.
        std::fs::write(&path, "https://h/other\n").expect("write");
        assert_eq!(file.items().count(), 0);
        assert!(file.changed());
    }

    #[test]
    fn a_file_that_is_not_utf8_is_refused_with_its_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("in.txt");
        std::fs::write(&path, b"https://h/a\nhttps://h/\xff\n").expect("write");
        let e = Input::open(&path).expect_err("not UTF-8");
        assert!(e.to_string().contains("line 2"), "{e}");
    }
}
