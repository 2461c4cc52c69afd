//! The batch input: one URL per line, or JSON lines `{url, method, headers, body, name}`.
//!
//! Blank lines and lines starting with `#` are skipped. Every other line is an item and gets the
//! next index (0-based), bad or not, so that `--shard K/N` splits a file the same way whatever its
//! errors are.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::File;
use std::io::{BufRead as _, BufReader, Read};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::Method;

use super::naming;
use super::urls::UrlParser;
use crate::client::parse_header;
use crate::policy::HeaderCaller;

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
    /// The grant its JSON line names (`"grant": "NAME"`), checked by the grant name rules;
    /// None: the batch's default (`--grant`), if any.
    pub grant: Option<String>,
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
/// needed. An input read from a regular file ([`Input::open`]) is read twice and never held, so
/// memory stays flat whatever the item count (a 16-byte map entry per name, 20 to 40 bytes with the
/// map's slack, while the first pass checks names for duplicates, freed after it); text given whole ([`Input::parse`], [`Input::read`]:
/// stdin, a pipe, a FIFO) is kept as it is.
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
    /// Read whole (a string given, stdin, a pipe): its bytes, UTF-8 or not.
    Text(Vec<u8>),
    /// A file, with its length and modification time when it was checked.
    File {
        path: PathBuf,
        len: u64,
        modified: Option<std::time::SystemTime>,
    },
}

impl Default for Source {
    fn default() -> Self {
        Source::Text(Vec::new())
    }
}

fn name_hash(name: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    name.hash(&mut h);
    h.finish()
}

/// Numbered lines (1-based); a read error ends them with `Err`.
/// A line of the input: its text, or, when it is not UTF-8, how many of its bytes are.
type Line = Result<String, usize>;

type Lines<'a> = Box<dyn Iterator<Item = std::io::Result<(u64, Line)>> + Send + 'a>;

/// The lines of a source (split at `\n`, a `\r` before it removed, a UTF-8 byte order mark at
/// the start removed), each with its 1-based number; a read error ends them with `Err`. A line
/// that is not UTF-8 is one bad line, not the end of the input.
fn lines(source: &Source) -> std::io::Result<Lines<'_>> {
    let line = |(n, bytes): (usize, Vec<u8>)| -> (u64, Line) {
        let mut bytes = bytes;
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
        if n == 0 && bytes.starts_with(b"\xEF\xBB\xBF") {
            bytes.drain(..3);
        }
        let text = String::from_utf8(bytes).map_err(|e| e.utf8_error().valid_up_to());
        (n as u64 + 1, text)
    };
    Ok(match source {
        Source::Text(text) => {
            // No line after a final newline (as `str::lines`).
            let text = text.strip_suffix(b"\n").unwrap_or(text);
            let pieces = (!text.is_empty()).then(|| text.split(|b| *b == b'\n'));
            Box::new(
                pieces
                    .into_iter()
                    .flatten()
                    .map(<[u8]>::to_vec)
                    .enumerate()
                    .map(move |l| Ok(line(l))),
            )
        }
        Source::File { path, .. } => {
            let reader = BufReader::new(File::open(path)?);
            Box::new(
                reader
                    .split(b'\n')
                    .enumerate()
                    .map(move |(n, l)| l.map(|l| line((n, l)))),
            )
        }
    })
}

/// The message about a line that is not UTF-8.
fn not_utf8(valid: usize) -> String {
    format!(
        "the line is not UTF-8 (a byte that is not, after {valid} bytes that are); save the input \
         as UTF-8"
    )
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
    grant: Option<String>,
}

impl Input {
    /// Parse the text of an input file (kept in memory; for a file, [`Input::open`] is lighter).
    pub fn parse(text: &str) -> Input {
        Input::from_bytes(text.as_bytes().to_vec())
    }

    fn from_bytes(bytes: Vec<u8>) -> Input {
        Input::check(Source::Text(bytes)).expect("bytes in memory cannot fail to read")
    }

    /// Read a whole input from `reader` (stdin, a pipe: what can be read only once) and keep it in
    /// memory. Fails when it cannot be read; a line that is not UTF-8 is a bad line.
    pub fn read(mut reader: impl Read) -> std::io::Result<Input> {
        let mut bytes = Vec::new();
        reader.read_to_end(&mut bytes)?;
        Ok(Input::from_bytes(bytes))
    }

    /// Check the input file at `path`, line by line, without keeping it: [`Input::items`] reads
    /// it again. What is not a regular file (a pipe, a FIFO, `<(cmd)`, `/dev/stdin`) can be read
    /// only once: it is read whole and kept, as [`Input::read`] does. Fails when it cannot be read;
    /// a line that is not UTF-8 is a bad line.
    pub fn open(path: &Path) -> std::io::Result<Input> {
        let meta = std::fs::metadata(path)?;
        if meta.is_dir() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "is a directory; give a file of URLs or JSON lines (or - for stdin)",
            ));
        }
        if !meta.is_file() {
            return Input::read(File::open(path)?);
        }
        Input::check(Source::File {
            path: path.to_owned(),
            len: meta.len(),
            modified: meta.modified().ok(),
        })
    }

    fn check(source: Source) -> std::io::Result<Input> {
        let mut input = Input::default();
        // The line of each name seen so far, by the name's hash. Dropped after the check.
        let mut names: HashMap<u64, u64> = HashMap::new();
        let mut index = 0u64;
        let mut last = 0u64;
        let mut urls = UrlParser::default();
        for next in lines(&source)? {
            let (line, raw) =
                next.map_err(|e| std::io::Error::new(e.kind(), format!("line {}: {e}", last + 1)))?;
            last = line;
            let raw = match raw {
                Ok(raw) => raw,
                Err(valid) => {
                    input.bad.push(BadLine {
                        line,
                        index,
                        message: not_utf8(valid),
                    });
                    index += 1;
                    continue;
                }
            };
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let claimed = parse_line(trimmed, line, index, &mut urls)
                .and_then(|(item, named)| claim_name(&mut names, &item.name, named, line, index));
            match claimed {
                Ok(false) => {}
                // A default name already taken (the same URL twice): a stable, distinct name.
                Ok(true) => input.renamed.push(index),
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
        let mut urls = UrlParser::default();
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
                // A line that is not UTF-8 is a bad line of the check: an index, no item.
                let (raw, utf8) = match raw {
                    Ok(raw) => (raw, true),
                    Err(_) => (String::new(), false),
                };
                let trimmed = raw.trim();
                if utf8 && (trimmed.is_empty() || trimmed.starts_with('#')) {
                    return None;
                }
                let i = index;
                index += 1;
                if bad.next_if_eq(&i).is_some() {
                    return None;
                }
                if !utf8 {
                    // Not a bad line when checked: the file changed since.
                    fail();
                    return None;
                }
                let rename = renamed.next_if_eq(&i).is_some();
                if self.shard.is_some_and(|s| !s.contains(i)) {
                    return None;
                }
                match parse_line(trimmed, line, i, &mut urls) {
                    Ok((mut item, _)) => {
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

/// Record `name`, the name of the item at `line` (`named`: given by the input, else its URL's
/// default), in `names` (the line of each name, by the name's hash). `Ok(true)`: the default name
/// is taken, so the item is renamed with [`renamed_name`] (recorded too); `Err`: the name (or the
/// renamed one) is already used by another line.
fn claim_name(
    names: &mut HashMap<u64, u64>,
    name: &str,
    named: bool,
    line: u64,
    index: u64,
) -> Result<bool, String> {
    let first = match names.entry(name_hash(name)) {
        Entry::Vacant(e) => {
            e.insert(line);
            return Ok(false);
        }
        Entry::Occupied(e) => *e.get(),
    };
    if named {
        return Err(format!(
            "the name {name:?} is already used by line {first}; give one of the two lines \
             another \"name\""
        ));
    }
    let renamed = renamed_name(name, index);
    match names.entry(name_hash(&renamed)) {
        Entry::Vacant(e) => {
            e.insert(line);
            Ok(true)
        }
        Entry::Occupied(e) => Err(format!(
            "the name {name:?} is already used by line {first}, and {renamed:?}, the name a \
             repeat gets, by line {}; give this line a name of its own as a JSON line \
             {{\"url\": \"...\", \"name\": \"...\"}}",
            e.get()
        )),
    }
}

/// What a JSON line must be, in our words (for the message about one that is not).
const JSON_ITEM: &str = "a JSON item is {\"url\": \"https://...\"} with optional \"method\", \
                         \"body\" and \"name\" (strings) and \"headers\" (an object of strings)";

/// Why a JSON line is not an item, in words of our own: serde's own text quotes the offending
/// value (a header's value: maybe a secret), and this message goes to stderr and the manifest.
fn json_problem(line: &str, e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let column = e.column();
    match e.classify() {
        Category::Syntax => {
            format!("not valid JSON (a syntax error at column {column}); {JSON_ITEM}")
        }
        Category::Eof => format!(
            "not valid JSON (the line ends at column {column} before the object does); \
             {JSON_ITEM}"
        ),
        Category::Data | Category::Io => format!(
            "not a valid JSON item (at column {column}): {}; {JSON_ITEM}",
            json_data_problem(line)
        ),
    }
}

/// Which field of a syntactically valid JSON line is wrong (never quoting a value or a key).
fn json_data_problem(line: &str) -> &'static str {
    use serde_json::Value;
    let Ok(value) = serde_json::from_str::<Value>(line) else {
        return "a value is not of the expected type";
    };
    let Value::Object(fields) = value else {
        return "the line is not a JSON object";
    };
    for (key, value) in &fields {
        let ok = match key.as_str() {
            "url" => value.is_string(),
            "method" | "body" | "name" => value.is_string() || value.is_null(),
            "headers" => value
                .as_object()
                .is_some_and(|h| h.values().all(Value::is_string)),
            _ => return "a field is not one of url, method, headers, body, name (in lower case)",
        };
        if !ok {
            return match key.as_str() {
                "url" => "\"url\" is not a string",
                "method" => "\"method\" is not a string",
                "body" => "\"body\" is not a string",
                "name" => "\"name\" is not a string",
                _ => {
                    "\"headers\" is not an object whose values are strings, like {\"Accept\": \"text/csv\"}"
                }
            };
        }
    }
    if !fields.contains_key("url") {
        return "\"url\" is missing";
    }
    "a field is given twice"
}

/// Parse one line (not blank, not a comment): the item, and whether the input named it.
fn parse_line(
    line: &str,
    number: u64,
    index: u64,
    urls: &mut UrlParser,
) -> Result<(Item, bool), String> {
    let (url, method, headers, body, name, grant) = if line.starts_with('{') {
        let j: JsonLine = serde_json::from_str(line).map_err(|e| json_problem(line, &e))?;
        (j.url, j.method, j.headers, j.body, j.name, j.grant)
    } else {
        if line.contains(char::is_whitespace) {
            return Err("a URL line must be one URL without spaces (or a JSON object)".into());
        }
        (line.to_owned(), None, BTreeMap::new(), None, None, None)
    };
    if let Some(g) = &grant {
        crate::grants::check_grant_name(g).map_err(|e| format!("\"grant\": {e}"))?;
    }
    let url = urls.parse(&url).map_err(|e| format!("not a URL ({e})"))?;
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
        let (n, v) = parse_header(HeaderCaller::Command, n, v).map_err(|e| e.to_string())?;
        map.append(n, v);
    }
    let named = name.is_some();
    let name = match name {
        Some(n) => {
            naming::check_name(&n)?;
            n
        }
        None => naming::default_name(&url),
    };
    let item = Item {
        line: number,
        index,
        url,
        method,
        headers: map,
        body: body.map(Bytes::from),
        name,
        grant,
    };
    Ok((item, named))
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
    fn a_json_line_may_name_its_grant() {
        let text = "{\"url\":\"https://h/1\",\"grant\":\"home-42\"}\nhttps://h/2\n{\"url\":\"https://h/3\",\"grant\":\"../x\"}\n{\"url\":\"https://h/4\",\"grant\":\"\"}\n";
        let input = Input::parse(text);
        let bad: Vec<u64> = input.bad.iter().map(|b| b.line).collect();
        assert_eq!(bad, vec![3, 4], "{:#?}", input.bad);
        assert!(
            input.bad[0].message.contains("not a grant name"),
            "{}",
            input.bad[0]
        );
        let grants: Vec<Option<String>> = input.items().map(|i| i.grant).collect();
        assert_eq!(grants, vec![Some("home-42".to_owned()), None]);
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

    /// A FIFO (like `--input <(cmd)` or a piped `/dev/stdin`) can be read only once: it is read
    /// whole, and gives every item its text gives.
    #[test]
    fn a_fifo_is_read_once_and_gives_all_its_items() {
        let text = "https://h/a\n# c\nhttps://h/a\n{\"url\":\"https://h/b\",\"name\":\"b\"}\nhttps://h/c\n";
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("in.fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo");
        assert!(made.success());
        let writer = {
            let fifo = fifo.clone();
            std::thread::spawn(move || std::fs::write(&fifo, text).expect("write the FIFO"))
        };
        let input = Input::open(&fifo).expect("open");
        writer.join().expect("writer");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let items: Vec<_> = input.items().map(|i| (i.line, i.index, i.name)).collect();
            let _ = tx.send((items, input.changed()));
        });
        // Should the FIFO be opened again, a writer that closes at once lets that read end.
        let t0 = std::time::Instant::now();
        let (items, changed) = loop {
            match rx.recv_timeout(std::time::Duration::from_millis(100)) {
                Ok(got) => break got,
                Err(_) => {
                    assert!(t0.elapsed().as_secs() < 30, "the items never ended");
                    drop(
                        std::fs::OpenOptions::new()
                            .read(true)
                            .write(true)
                            .open(&fifo),
                    );
                }
            }
        };
        let mem: Vec<_> = Input::parse(text)
            .items()
            .map(|i| (i.line, i.index, i.name))
            .collect();
        assert_eq!(items.len(), 4);
        assert_eq!(items, mem);
        assert!(!changed);
    }

    #[test]
    fn a_directory_is_refused_with_what_to_give() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = Input::open(dir.path()).expect_err("a directory");
        assert!(e.to_string().contains("directory"), "{e}");
    }

    #[test]
    fn a_line_read_whole_that_is_not_utf8_is_one_bad_line() {
        let input =
            Input::read(&b"https://h/a\n\nhttps://h/\xff\nhttps://h/c\n"[..]).expect("read");
        assert_eq!(input.bad.len(), 1, "{:?}", input.bad);
        assert_eq!((input.bad[0].line, input.bad[0].index), (3, 1));
        assert!(
            input.bad[0].message.contains("not UTF-8"),
            "{:?}",
            input.bad
        );
        let items: Vec<_> = input.items().map(|i| (i.line, i.index)).collect();
        assert_eq!(items, vec![(1, 0), (4, 2)]);
        assert!(!input.changed());
    }

    #[test]
    fn a_byte_order_mark_and_crlf_line_ends_are_not_part_of_the_lines() {
        let text = b"\xEF\xBB\xBFhttps://h/a\r\n{\"url\":\"https://h/b\",\"name\":\"b\"}\r\n";
        let from_memory = Input::read(&text[..]).expect("read");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("in.txt");
        std::fs::write(&path, text).expect("write");
        let from_file = Input::open(&path).expect("open");
        for input in [from_memory, from_file] {
            assert!(input.bad.is_empty(), "{:?}", input.bad);
            let names: Vec<_> = input.items().map(|i| (i.url.to_string(), i.name)).collect();
            assert_eq!(names.len(), 2);
            assert_eq!(names[0].0, "https://h/a");
            assert_eq!(names[1], ("https://h/b".to_string(), "b".to_string()));
        }
    }

    /// A JSON line without "name" gets its URL's default name, renamed `-INDEX` when repeated, as a
    /// URL line does; only a name the input gives twice is refused.
    #[test]
    fn json_lines_without_a_name_are_renamed_like_url_lines() {
        let text = "{\"url\":\"https://h/x\",\"method\":\"POST\",\"body\":\"a=1\"}\n{\"url\":\"https://h/x\",\"method\":\"POST\",\"body\":\"a=2\"}\nhttps://h/x\n";
        let input = Input::parse(text);
        assert!(input.bad.is_empty(), "{:?}", input.bad);
        let items: Vec<Item> = input.items().collect();
        let base = naming::default_name(&items[0].url);
        let names: Vec<&str> = items.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(
            names,
            vec![base.clone(), format!("{base}-1"), format!("{base}-2")]
        );
        assert_eq!(items[1].body.as_deref(), Some(&b"a=2"[..]));
    }

    /// Bytes this thread has read with `read` and its kin so far (Linux: `/proc/thread-self/io`).
    fn bytes_read_by_this_thread() -> u64 {
        let io = std::fs::read_to_string("/proc/thread-self/io").expect("/proc/thread-self/io");
        io.lines()
            .find_map(|l| l.strip_prefix("rchar: "))
            .and_then(|v| v.trim().parse().ok())
            .expect("rchar in /proc/thread-self/io")
    }

    /// The line holding a name first is remembered, not searched for again: checking a file of
    /// 10,000 names each given twice reads it once (counted, not timed: the bytes this thread
    /// reads), where a search for each duplicate's first line would read it again per duplicate;
    /// each duplicate is reported with the right first line, from a file as from memory.
    #[test]
    fn duplicate_names_are_reported_in_one_read_with_their_first_line() {
        let n = 10_000u64;
        let text: String = (0..2 * n)
            .map(|i| format!("{{\"url\":\"https://h/{i}\",\"name\":\"n{}\"}}\n", i % n))
            .collect();
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("in.jsonl");
        std::fs::write(&path, &text).expect("write");
        let before = bytes_read_by_this_thread();
        let from_file = Input::open(&path).expect("open");
        let read = bytes_read_by_this_thread() - before;
        let size = text.len() as u64;
        // Once, plus the reads of /proc/thread-self/io: less than twice the file. One more
        // pass per duplicate would be 10,000 times over.
        assert!(
            (size..2 * size).contains(&read),
            "{read} bytes read to check a file of {size}"
        );
        for input in [from_file, Input::parse(&text)] {
            assert_eq!(input.bad.len() as u64, n);
            assert_eq!(input.len() as u64, n);
            for b in &input.bad {
                let first = b.line - n;
                assert!(
                    b.message.starts_with(&format!(
                        "the name \"n{}\" is already used by line {first};",
                        first - 1
                    )),
                    "{b}"
                );
            }
        }
    }

    /// A repeat of a URL is renamed `NAME-INDEX`; when another line gives that name, the repeat
    /// is a bad line (never two items writing one file).
    #[test]
    fn a_renamed_repeat_never_takes_a_name_another_line_gives() {
        let url = url::Url::parse("https://h/a").expect("url");
        let taken = format!("{}-2", naming::default_name(&url));
        let text = format!(
            "{{\"url\":\"https://h/other\",\"name\":\"{taken}\"}}\nhttps://h/a\nhttps://h/a\n"
        );
        let input = Input::parse(&text);
        assert_eq!(input.bad.len(), 1, "{:?}", input.bad);
        let bad = &input.bad[0];
        assert_eq!((bad.line, bad.index), (3, 2));
        assert!(bad.message.contains("by line 1"), "{bad}");
        assert!(bad.message.contains("\"name\""), "{bad}");
        let names: Vec<String> = input.items().map(|i| i.name).collect();
        assert_eq!(names.len(), 2);
        assert_ne!(names[0], names[1]);
        // The other way round: the renamed repeat comes first, the line giving its name is bad.
        let text = format!(
            "https://h/a\nhttps://h/a\n{{\"url\":\"https://h/other\",\"name\":\"{}-1\"}}\n",
            naming::default_name(&url)
        );
        let input = Input::parse(&text);
        assert_eq!(input.bad.len(), 1, "{:?}", input.bad);
        assert_eq!(input.bad[0].line, 3);
        assert!(
            input.bad[0].message.contains("by line 2"),
            "{}",
            input.bad[0]
        );
    }

    /// A bad JSON line's message says where and what is expected, in our words: it never quotes
    /// the line's values (a header's value may be a secret).
    #[test]
    fn json_errors_never_quote_the_line() {
        let lines = [
            (
                r#"{"url":"https://h/x","headers":"X-Api-Key: s3cret"}"#,
                "\"headers\"",
            ),
            (
                r#"{"url":"https://h/x","headers":{"X-Api-Key":["s3cret"]}}"#,
                "\"headers\"",
            ),
            (
                r#"{"url":"https://h/x","body":{"s3cret":"s3cret"}}"#,
                "\"body\"",
            ),
            (
                r#"{"url":"https://h/x","s3cret":"s3cret"}"#,
                "not one of url",
            ),
            (r#"{"url":["s3cret"]}"#, "\"url\" is not a string"),
            (
                r#"{"headers":{"X-Api-Key":"s3cret"}}"#,
                "\"url\" is missing",
            ),
            (r#"{"url":"https://h/x","url":"https://s3cret/"}"#, "twice"),
            (
                r#"{"url":"https://h/x","headers":{"X-Api-Key":"s3cret"}"#,
                "line ends",
            ),
            (
                r#"{"url":"https://h/x","headers":{"X-Api-Key":"s3cret" s3cret}}"#,
                "syntax",
            ),
            (
                r#"{"url":"https://h/x","headers":{"X-Api-Key":"s3cret\q"}}"#,
                "syntax",
            ),
            (r#"{"url":"https://h/x","name":12345678}"#, "\"name\""),
        ];
        let text: String = lines.iter().map(|(l, _)| format!("{l}\n")).collect();
        let input = Input::parse(&text);
        assert_eq!(input.bad.len(), lines.len(), "{:#?}", input.bad);
        for (b, (_, expect)) in input.bad.iter().zip(lines) {
            let m = b.to_string();
            assert!(!m.contains("s3cret") && !m.contains("12345678"), "{m}");
            assert!(m.contains(expect), "{m} should say {expect}");
            assert!(m.contains("column"), "{m}");
        }
    }

    #[test]
    fn a_file_line_that_is_not_utf8_is_one_bad_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("in.txt");
        std::fs::write(&path, b"https://h/a\nhttps://h/\xff\n\nhttps://h/c").expect("write");
        let input = Input::open(&path).expect("open");
        assert_eq!(input.bad.len(), 1, "{:?}", input.bad);
        assert_eq!((input.bad[0].line, input.bad[0].index), (2, 1));
        let items: Vec<_> = input.items().map(|i| (i.line, i.index)).collect();
        assert_eq!(items, vec![(1, 0), (4, 2)]);
        assert!(!input.changed());
    }
}
