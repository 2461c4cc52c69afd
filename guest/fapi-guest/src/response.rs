//! [`Response`] and its streaming [`Body`].

use std::io;

use crate::{Error, raw};

/// One response header: a case-insensitive ASCII name and a byte value.
pub use raw::Header;

/// The host's cap on one `read` call (the WIT says at most 1 MiB).
const MAX_READ: u32 = 1024 * 1024;

/// A response from the host. Redirects arrive as they are (3xx with `location`): the host never follows
/// them. The body is still on the wire until you read it; dropping the response releases the connection.
#[derive(Debug)]
pub struct Response {
    status: u16,
    headers: Vec<Header>,
    interaction_id: String,
    body: Body,
}

impl Response {
    pub(crate) fn from_raw(r: raw::Response) -> Self {
        Response {
            status: r.status,
            headers: r.headers,
            interaction_id: r.interaction_id,
            body: Body::from(r.body),
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// All response headers, in the order the server sent them.
    pub fn headers(&self) -> &[Header] {
        &self.headers
    }

    /// The first value of header `name` (case-insensitive), if present and valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(&h.value).ok())
    }

    /// The `x-fapi-interaction-id` the host sent with the request, for correlating with the provider.
    pub fn interaction_id(&self) -> &str {
        &self.interaction_id
    }

    /// `Ok(self)` for a 2xx status, otherwise [`Error::Status`] (the body is dropped unread).
    pub fn error_for_status(self) -> Result<Self, Error> {
        if self.is_success() {
            Ok(self)
        } else {
            Err(Error::Status {
                status: self.status,
                interaction_id: self.interaction_id,
            })
        }
    }

    /// The whole body, read by the host in one go (up to its response size limit, else
    /// [`Error::TooLarge`]).
    pub fn bytes(self) -> Result<Vec<u8>, Error> {
        self.body.read_all()
    }

    /// The whole body as text; bytes that are not UTF-8 become U+FFFD.
    pub fn text(self) -> Result<String, Error> {
        let bytes = self.bytes()?;
        Ok(match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })
    }

    /// The whole body parsed as JSON into `T`; a mismatch is [`Error::Decode`].
    #[cfg(feature = "json")]
    pub fn json<T: serde::de::DeserializeOwned>(self) -> Result<T, Error> {
        let bytes = self.bytes()?;
        serde_json::from_slice(&bytes).map_err(|e| Error::Decode(e.to_string()))
    }

    /// The next chunk of the body, at most `max` bytes (capped at 1 MiB); `None` at the end.
    pub fn chunk(&mut self, max: u32) -> Result<Option<Vec<u8>>, Error> {
        self.body.chunk(max)
    }

    /// The body, to stream on its own (the head is dropped).
    pub fn into_body(self) -> Body {
        self.body
    }
}

/// Streams the body: `std::io::copy(&mut response, &mut std::io::stdout())`. Each `read` is one call to
/// the host, so wrap it in a `BufReader` with a large capacity (64 KiB) to read lines.
impl io::Read for Response {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.body.read(buf)
    }
}

/// A response body, read from the host in chunks so that any size needs bounded memory. A batch
/// processor gets one from the host and wraps it with `Body::from`.
#[derive(Debug)]
pub struct Body {
    raw: raw::Body,
    /// Bytes of the last chunk that did not fit in the caller's `read` buffer.
    pending: Vec<u8>,
    /// Offset of the first unread byte of `pending`.
    offset: usize,
    done: bool,
}

impl From<raw::Body> for Body {
    fn from(raw: raw::Body) -> Self {
        Body {
            raw,
            pending: Vec::new(),
            offset: 0,
            done: false,
        }
    }
}

impl Body {
    /// The next chunk, at most `max` bytes (capped at 1 MiB, at least 1); `None` at the end.
    pub fn chunk(&mut self, max: u32) -> Result<Option<Vec<u8>>, Error> {
        if self.offset < self.pending.len() {
            let end = self.pending.len().min(self.offset + max.max(1) as usize);
            let out = self.pending[self.offset..end].to_vec();
            self.offset = end;
            return Ok(Some(out));
        }
        if self.done {
            return Ok(None);
        }
        let bytes = self.raw.read(max.clamp(1, MAX_READ))?;
        if bytes.is_empty() {
            self.done = true;
            return Ok(None);
        }
        Ok(Some(bytes))
    }

    /// Everything that is left, read by the host in one call (up to its response size limit, else
    /// [`Error::TooLarge`]).
    pub fn read_all(mut self) -> Result<Vec<u8>, Error> {
        let mut out = self.pending.split_off(self.offset);
        if !self.done {
            let rest = self.raw.read_all()?;
            if out.is_empty() {
                return Ok(rest);
            }
            out.extend_from_slice(&rest);
        }
        Ok(out)
    }
}

impl io::Read for Body {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.offset >= self.pending.len() {
            let want = u32::try_from(buf.len()).unwrap_or(MAX_READ);
            match self.chunk(want)? {
                None => return Ok(0),
                Some(bytes) => {
                    self.pending = bytes;
                    self.offset = 0;
                }
            }
        }
        let available = &self.pending[self.offset..];
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.offset += n;
        Ok(n)
    }
}
