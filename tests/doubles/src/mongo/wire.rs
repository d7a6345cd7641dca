//! The MongoDB wire protocol, server side: read OP_MSG (and legacy OP_QUERY
//! handshakes), write OP_MSG and OP_REPLY replies.
//!
//! Anything malformed is an [`io::ErrorKind::InvalidData`] error; the caller
//! closes the connection, as a real server does.

use bson::{Bson, Document};
use std::io;
use tokio::io::{AsyncRead, AsyncReadExt};

/// `OP_REPLY`, the legacy reply to `OP_QUERY`.
const OP_REPLY: i32 = 1;
/// `OP_QUERY`, legacy; drivers may still send their first handshake with it.
const OP_QUERY: i32 = 2004;
/// `OP_MSG`.
const OP_MSG: i32 = 2013;

const HEADER_LEN: usize = 16;
/// Largest message accepted; matches the advertised `maxMessageSizeBytes`.
pub(crate) const MAX_MESSAGE_SIZE: usize = 48_000_000;

const FLAG_CHECKSUM_PRESENT: u32 = 1;
const FLAG_MORE_TO_COME: u32 = 1 << 1;
const FLAG_EXHAUST_ALLOWED: u32 = 1 << 16;
/// Bits 0-15 are "required": a receiver must reject unknown ones.
const REQUIRED_BITS: u32 = 0xFFFF;
const KNOWN_BITS: u32 = FLAG_CHECKSUM_PRESENT | FLAG_MORE_TO_COME | FLAG_EXHAUST_ALLOWED;

/// One decoded request.
#[derive(Debug)]
pub(crate) enum Request {
    /// An OP_MSG command. Document sequences are merged into `body` as arrays.
    Msg {
        request_id: i32,
        /// The client does not want a reply (`moreToCome`).
        more_to_come: bool,
        body: Document,
    },
    /// A legacy OP_QUERY against `<db>.$cmd`.
    Query {
        request_id: i32,
        /// The database of `<db>.$cmd`, or `None` if the namespace was not a
        /// command namespace.
        db: Option<String>,
        query: Document,
    },
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Reads one request. `Ok(None)` on a clean end of stream between messages.
pub(crate) async fn read_request<R: AsyncRead + Unpin>(reader: &mut R) -> io::Result<Option<Request>> {
    let mut header = [0u8; HEADER_LEN];
    match reader.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let length = i32_at(&header, 0)?;
    let request_id = i32_at(&header, 4)?;
    let op_code = i32_at(&header, 12)?;
    let length = usize::try_from(length).map_err(|_| invalid("negative message length"))?;
    if !(HEADER_LEN + 5..=MAX_MESSAGE_SIZE).contains(&length) {
        return Err(invalid(format!("message length {length} out of range")));
    }
    let mut body = vec![0u8; length - HEADER_LEN];
    reader.read_exact(&mut body).await?;
    match op_code {
        OP_MSG => parse_op_msg(request_id, &body).map(Some),
        OP_QUERY => parse_op_query(request_id, &body).map(Some),
        other => Err(invalid(format!("unsupported opCode {other}"))),
    }
}

fn parse_op_msg(request_id: i32, bytes: &[u8]) -> io::Result<Request> {
    let flags = u32::from_le_bytes(take::<4>(bytes, 0)?);
    if flags & REQUIRED_BITS & !KNOWN_BITS != 0 {
        return Err(invalid(format!("unknown required OP_MSG flag bits {flags:#x}")));
    }
    let end = if flags & FLAG_CHECKSUM_PRESENT != 0 {
        // The CRC-32C is not verified: the driver only sends one when asked.
        bytes.len().checked_sub(4).ok_or_else(|| invalid("missing checksum"))?
    } else {
        bytes.len()
    };
    let mut pos = 4;
    let mut body: Option<Document> = None;
    let mut sequences: Vec<(String, Vec<Bson>)> = Vec::new();
    while pos < end {
        let kind = bytes[pos];
        pos += 1;
        match kind {
            0 => {
                let (doc, len) = read_document(&bytes[..end], pos)?;
                if body.replace(doc).is_some() {
                    return Err(invalid("more than one kind-0 section"));
                }
                pos += len;
            }
            1 => {
                let size = usize::try_from(i32_at(bytes, pos)?).map_err(|_| invalid("negative section size"))?;
                let section_end = pos
                    .checked_add(size)
                    .filter(|e| *e <= end && size > 4)
                    .ok_or_else(|| invalid("document sequence overruns message"))?;
                let (identifier, id_len) = read_cstring(&bytes[..section_end], pos + 4)?;
                let mut cursor = pos + 4 + id_len;
                let mut docs = Vec::new();
                while cursor < section_end {
                    let (doc, len) = read_document(&bytes[..section_end], cursor)?;
                    docs.push(Bson::Document(doc));
                    cursor += len;
                }
                sequences.push((identifier, docs));
                pos = section_end;
            }
            other => return Err(invalid(format!("unknown section kind {other}"))),
        }
    }
    let mut body = body.ok_or_else(|| invalid("OP_MSG without a kind-0 section"))?;
    for (identifier, docs) in sequences {
        if body.contains_key(&identifier) {
            return Err(invalid(format!("duplicate field {identifier} in OP_MSG")));
        }
        body.insert(identifier, Bson::Array(docs));
    }
    Ok(Request::Msg { request_id, more_to_come: flags & FLAG_MORE_TO_COME != 0, body })
}

fn parse_op_query(request_id: i32, bytes: &[u8]) -> io::Result<Request> {
    // flags (4), fullCollectionName (cstring), numberToSkip (4), numberToReturn (4), query.
    let (namespace, ns_len) = read_cstring(bytes, 4)?;
    let query_at = 4 + ns_len + 8;
    let (query, _) = read_document(bytes, query_at)?;
    let db = namespace.strip_suffix(".$cmd").map(str::to_string);
    Ok(Request::Query { request_id, db, query })
}

/// Reads the BSON document that starts at `pos`; returns it and its length.
fn read_document(bytes: &[u8], pos: usize) -> io::Result<(Document, usize)> {
    let len = usize::try_from(i32_at(bytes, pos)?).map_err(|_| invalid("negative document length"))?;
    let end = pos
        .checked_add(len)
        .filter(|e| *e <= bytes.len() && len >= 5)
        .ok_or_else(|| invalid("document overruns message"))?;
    let doc = Document::from_reader(&bytes[pos..end]).map_err(|e| invalid(format!("bad BSON: {e}")))?;
    Ok((doc, len))
}

/// Reads a NUL-terminated UTF-8 string at `pos`; returns it and its length
/// including the NUL.
fn read_cstring(bytes: &[u8], pos: usize) -> io::Result<(String, usize)> {
    let rest = bytes.get(pos..).ok_or_else(|| invalid("cstring out of range"))?;
    let nul = rest.iter().position(|b| *b == 0).ok_or_else(|| invalid("unterminated cstring"))?;
    let s = std::str::from_utf8(&rest[..nul]).map_err(|_| invalid("cstring is not UTF-8"))?;
    Ok((s.to_string(), nul + 1))
}

fn take<const N: usize>(bytes: &[u8], pos: usize) -> io::Result<[u8; N]> {
    bytes.get(pos..pos.saturating_add(N)).and_then(|s| s.try_into().ok()).ok_or_else(|| invalid("truncated message"))
}

fn i32_at(bytes: &[u8], pos: usize) -> io::Result<i32> {
    take::<4>(bytes, pos).map(i32::from_le_bytes)
}

fn header(length: usize, request_id: i32, response_to: i32, op_code: i32) -> Vec<u8> {
    let mut out = Vec::with_capacity(length);
    // Replies are far below 2 GiB; saturate rather than panic if not.
    out.extend_from_slice(&i32::try_from(length).unwrap_or(i32::MAX).to_le_bytes());
    out.extend_from_slice(&request_id.to_le_bytes());
    out.extend_from_slice(&response_to.to_le_bytes());
    out.extend_from_slice(&op_code.to_le_bytes());
    out
}

fn serialize(doc: &Document) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    doc.to_writer(&mut bytes).map_err(|e| io::Error::other(format!("cannot encode reply: {e}")))?;
    Ok(bytes)
}

/// Encodes an OP_MSG reply with one kind-0 section.
pub(crate) fn encode_msg_reply(request_id: i32, response_to: i32, doc: &Document) -> io::Result<Vec<u8>> {
    let body = serialize(doc)?;
    let length = HEADER_LEN + 4 + 1 + body.len();
    let mut out = header(length, request_id, response_to, OP_MSG);
    out.extend_from_slice(&0u32.to_le_bytes());
    out.push(0);
    out.extend_from_slice(&body);
    Ok(out)
}

/// Encodes an OP_REPLY with one document.
pub(crate) fn encode_op_reply(request_id: i32, response_to: i32, doc: &Document) -> io::Result<Vec<u8>> {
    let body = serialize(doc)?;
    let length = HEADER_LEN + 4 + 8 + 4 + 4 + body.len();
    let mut out = header(length, request_id, response_to, OP_REPLY);
    out.extend_from_slice(&0i32.to_le_bytes()); // responseFlags
    out.extend_from_slice(&0i64.to_le_bytes()); // cursorID
    out.extend_from_slice(&0i32.to_le_bytes()); // startingFrom
    out.extend_from_slice(&1i32.to_le_bytes()); // numberReturned
    out.extend_from_slice(&body);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    fn op_msg(flags: u32, sections: &[u8]) -> Vec<u8> {
        let len = HEADER_LEN + 4 + sections.len();
        let mut out = header(len, 7, 0, OP_MSG);
        out.extend_from_slice(&flags.to_le_bytes());
        out.extend_from_slice(sections);
        out
    }

    fn kind0(doc: &Document) -> Vec<u8> {
        let mut out = vec![0u8];
        out.extend(serialize(doc).unwrap());
        out
    }

    async fn read(bytes: Vec<u8>) -> io::Result<Option<Request>> {
        read_request(&mut bytes.as_slice()).await
    }

    #[tokio::test]
    async fn merges_document_sequences_into_the_body() {
        let mut sections = kind0(&doc! {"insert": "c", "$db": "x"});
        let docs = [doc! {"a": 1}, doc! {"a": 2}];
        let mut payload = b"documents\0".to_vec();
        for d in &docs {
            payload.extend(serialize(d).unwrap());
        }
        sections.push(1);
        sections.extend_from_slice(&i32::try_from(payload.len() + 4).unwrap().to_le_bytes());
        sections.extend(payload);
        let Some(Request::Msg { body, request_id, .. }) = read(op_msg(0, &sections)).await.unwrap() else {
            panic!("expected OP_MSG");
        };
        assert_eq!(request_id, 7);
        assert_eq!(body.get_array("documents").unwrap().len(), 2);
    }

    #[tokio::test]
    async fn rejects_garbage_without_panicking() {
        let good = op_msg(0, &kind0(&doc! {"ping": 1, "$db": "admin"}));
        for cut in 0..good.len() {
            let mut bad = good.clone();
            bad[cut] ^= 0xFF;
            let _ = read(bad).await;
            let _ = read(good[..cut].to_vec()).await;
        }
        assert!(read(op_msg(1 << 5, &kind0(&doc! {"ping": 1}))).await.is_err());
        assert!(read(Vec::new()).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn reads_op_query_handshakes() {
        let mut body = 0i32.to_le_bytes().to_vec();
        body.extend_from_slice(b"admin.$cmd\0");
        body.extend_from_slice(&0i32.to_le_bytes());
        body.extend_from_slice(&(-1i32).to_le_bytes());
        body.extend(serialize(&doc! {"isMaster": 1}).unwrap());
        let mut msg = header(HEADER_LEN + body.len(), 3, 0, OP_QUERY);
        msg.extend(body);
        let Some(Request::Query { db, query, .. }) = read(msg).await.unwrap() else {
            panic!("expected OP_QUERY");
        };
        assert_eq!(db.as_deref(), Some("admin"));
        assert!(query.contains_key("isMaster"));
    }
}
