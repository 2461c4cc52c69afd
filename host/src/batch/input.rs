//! The batch input: one URL per line, or JSON lines `{url, method, headers, body, name}`.
//!
//! Blank lines and lines starting with `#` are skipped. Every other line is an item and gets the
//! next index (0-based), bad or not, so that `--shard K/N` splits a file the same way whatever its
//! errors are.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::str::FromStr;

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
/// Every line is validated up front (so a bad line stops the batch before it starts), but an item
/// is kept as the position of its line and materialised when it is needed ([`Input::items`]):
/// memory stays a few bytes per item beyond the input's text, whatever the item count.
#[derive(Clone, Debug, Default)]
pub struct Input {
    text: String,
    entries: Vec<Entry>,
    /// The lines that are not usable items.
    pub bad: Vec<BadLine>,
}

/// Where a valid item's line is in the text.
#[derive(Clone, Copy, Debug)]
struct Entry {
    line: u64,
    index: u64,
    start: usize,
    end: usize,
    /// A repeat of an earlier URL: its default name gets `-INDEX`.
    renamed: bool,
}

fn name_hash(name: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    name.hash(&mut h);
    h.finish()
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
    /// Parse the text of an input file.
    pub fn parse(text: &str) -> Input {
        let mut input = Input {
            text: text.to_owned(),
            ..Input::default()
        };
        // Names seen so far, by hash: (first line). Dropped after parsing.
        let mut names: HashMap<u64, u64> = HashMap::new();
        let mut index = 0u64;
        for (n, raw) in input.text.lines().enumerate() {
            let line = n as u64 + 1;
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            match parse_line(trimmed, line, index) {
                Ok(item) => {
                    let mut renamed = false;
                    if let Some(first) = names.get(&name_hash(&item.name)) {
                        if item_named_by_input(trimmed) {
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
                        renamed = true;
                        names.insert(name_hash(&format!("{}-{index}", item.name)), line);
                    } else {
                        names.insert(name_hash(&item.name), line);
                    }
                    let start = trimmed.as_ptr() as usize - input.text.as_ptr() as usize;
                    input.entries.push(Entry {
                        line,
                        index,
                        start,
                        end: start + trimmed.len(),
                        renamed,
                    });
                }
                Err(message) => input.bad.push(BadLine {
                    line,
                    index,
                    message,
                }),
            }
            index += 1;
        }
        input
    }

    /// The number of usable items.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there is no usable item.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The usable items, in input order, each materialised on demand.
    pub fn items(&self) -> impl Iterator<Item = Item> + '_ {
        self.entries.iter().map(|e| {
            let mut item = parse_line(&self.text[e.start..e.end], e.line, e.index)
                .expect("every entry was validated by Input::parse");
            if e.renamed {
                item.name = format!("{}-{}", item.name, e.index);
            }
            item
        })
    }

    /// Keep only the items and bad lines of `shard`.
    pub fn shard(mut self, shard: Shard) -> Input {
        self.entries.retain(|e| shard.contains(e.index));
        self.bad.retain(|b| shard.contains(b.index));
        self
    }
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
}
