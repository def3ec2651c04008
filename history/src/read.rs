//! The reader: pages of a channel's messages, filtered, bounded and resumable.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::{Error, MessageId, Record, Scan, Store, SubtopicFilter};

/// The most rows one page asks the store for, matched or not: a filter that matches little
/// returns a short page and a cursor instead of scanning the whole channel.
pub const MAX_SCANNED: usize = 10_000;
/// The most bytes ([`Record::stored_bytes`]) one page holds, whatever its `limit`: a page of
/// large messages ends early, with a cursor (it always holds at least one message).
pub const MAX_PAGE_BYTES: u64 = 8 << 20;
/// The most rows one scan of the store returns, so what a read holds at once stays a few
/// messages' worth beyond its page.
const CHUNK_ROWS: u32 = 128;
/// The largest `limit`.
pub const MAX_LIMIT: u32 = 1_000;
/// The `limit` when none is given.
pub const DEFAULT_LIMIT: u32 = 100;

/// Newest first (the default) or oldest first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Order {
    /// Newest first.
    #[default]
    Desc,
    /// Oldest first.
    Asc,
}

/// Where the next page starts: opaque to clients (base64url), bound to its order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursor {
    order: Order,
    after: MessageId,
}

impl Cursor {
    /// The text a client passes back as `cursor`.
    pub fn encode(&self) -> String {
        let mut bytes = [0u8; 17];
        bytes[0] = match self.order {
            Order::Desc => b'd',
            Order::Asc => b'a',
        };
        bytes[1..].copy_from_slice(&self.after.to_bytes());
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// The cursor `text` stands for, if it is one of ours for `order`.
    pub fn decode(text: &str, order: Order) -> Option<Self> {
        let bytes = URL_SAFE_NO_PAD.decode(text).ok()?;
        let (&tag, id) = bytes.split_first()?;
        let expected = match order {
            Order::Desc => b'd',
            Order::Asc => b'a',
        };
        (tag == expected).then_some(())?;
        Some(Self {
            order,
            after: MessageId::from_slice(id)?,
        })
    }
}

/// One read of a channel's history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Query {
    /// The tenant.
    pub tenant: String,
    /// The channel.
    pub channel: String,
    /// The channel's current uid: an older channel of the same name is never read.
    pub channel_uid: String,
    /// Which topics below the channel.
    pub filter: SubtopicFilter,
    /// Only messages created at or after this, ns since the Unix epoch.
    pub from_ns: Option<u64>,
    /// Only messages created before this.
    pub to_ns: Option<u64>,
    /// At most this many messages (1 to [`MAX_LIMIT`]).
    pub limit: u32,
    /// Newest or oldest first.
    pub order: Order,
    /// Where a previous page ended.
    pub cursor: Option<Cursor>,
}

/// One page of messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page {
    /// The messages, in the query's order.
    pub records: Vec<Record>,
    /// Where the next page starts, if there may be more.
    pub next: Option<Cursor>,
}

/// Reads one page: the rows of the query's channel in order, those the filter matches and
/// `keep` allows (the reader's per-topic authorization: a denied subtopic is never returned,
/// whatever the filter), at most `limit`, scanning at most [`MAX_SCANNED`] rows.
pub async fn read<S: Store>(
    store: &S,
    query: &Query,
    keep: impl Fn(&Record) -> bool,
) -> Result<Page, Error> {
    let limit = query.limit.clamp(1, MAX_LIMIT);
    let (prefix, exact) = query.filter.literal_prefix();
    let mut scan = Scan {
        tenant: query.tenant.clone(),
        channel: query.channel.clone(),
        channel_uid: query.channel_uid.clone(),
        prefix,
        exact,
        after: query.cursor.map(|c| c.after),
        min: query.from_ns.map(MessageId::floor),
        max: query.to_ns.map(MessageId::floor),
        order: query.order,
        limit: limit.min(CHUNK_ROWS),
    };
    let mut records: Vec<Record> = Vec::new();
    let mut bytes = 0;
    let cursor_at = |r: Option<&Record>| {
        r.map(|r| Cursor {
            order: query.order,
            after: r.id,
        })
    };
    let mut scanned = 0;
    loop {
        let rows = store.scan(&scan).await?;
        let full_chunk = rows.len() == scan.limit as usize;
        scanned += rows.len();
        let mut last = None;
        for row in rows {
            last = Some(row.id);
            if query.filter.matches(&row.subtopic) && keep(&row) {
                let size = row.stored_bytes();
                if !records.is_empty() && bytes + size > MAX_PAGE_BYTES {
                    // The next page starts with this one.
                    let next = cursor_at(records.last());
                    return Ok(Page { records, next });
                }
                bytes += size;
                records.push(row);
                if records.len() == limit as usize {
                    let next = cursor_at(records.last());
                    return Ok(Page { records, next });
                }
            }
        }
        let Some(last) = last.filter(|_| full_chunk) else {
            return Ok(Page {
                records,
                next: None,
            });
        };
        if scanned >= MAX_SCANNED {
            let next = Some(Cursor {
                order: query.order,
                after: last,
            });
            return Ok(Page { records, next });
        }
        scan.after = Some(last);
    }
}
