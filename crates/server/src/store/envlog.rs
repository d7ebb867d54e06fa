//! The envelope log of the SQLite store: the envelopes of one-to-one
//! messages, most of a mailbox's bytes, appended to segment files beside the
//! database instead of kept in its rows. A row stored in SQLite is written
//! twice, to the WAL and again when the WAL is checkpointed into the
//! database file; an envelope here is written once. Written and read with
//! `O_DIRECT` where the file system allows it, the bytes skip the page cache
//! too: in the durable bench, copying pages into the page cache was a third
//! of the server's time (docs/BENCHMARKS.md).
//!
//! - A segment (`DIR/00000001.log`, …) is appended to by the writer alone.
//!   The bytes of a transaction are written and made durable (`fdatasync`)
//!   before the transaction that points at them commits, so a committed row
//!   never points at bytes a crash could lose. Each transaction's bytes
//!   start at a block boundary, so a write never touches (and a torn write
//!   cannot damage) the bytes of an earlier one.
//! - A process appends to a segment of its own, made at start, and to a new
//!   one once a segment passes [`SEGMENT_BYTES`]: so no process ever appends
//!   after bytes it did not write.
//! - The writer counts the rows pointing into each segment (counted from the
//!   database at start) and removes a segment, other than the one it appends
//!   to, once none does, and only after the WAL sync that makes those deletes
//!   durable (a power cut before it could bring the rows back). Counts go up
//!   when bytes are written and down only when a delete has committed, so a
//!   count is never below the truth: a failure can keep a segment too long
//!   (until the next start), never remove one too early. Bytes of a
//!   rolled-back or duplicate insert are dead space until their segment goes.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Alignment of `O_DIRECT` offsets, lengths and buffers.
const ALIGN: usize = 4096;

/// A segment that has grown past this many bytes takes no more appends.
pub(crate) const SEGMENT_BYTES: u64 = 64 << 20;

/// Reads of one segment closer than this are made as one...
const READ_GAP: u64 = 16 << 10;

/// ...up to this many bytes in one read.
const READ_MAX: u64 = 8 << 20;

/// Most bytes the write buffers keep between flushes; a larger
/// transaction's buffers go when it is written.
const KEEP_BYTES: usize = 8 << 20;

/// Where an envelope is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LogRef {
    pub(crate) seg: u32,
    pub(crate) off: u64,
    pub(crate) len: u32,
}

fn segment_path(dir: &Path, seg: u32) -> PathBuf {
    dir.join(format!("{seg:08}.log"))
}

/// The segment number a file name stands for.
fn segment_of(name: &str) -> Option<u32> {
    let digits = name.strip_suffix(".log")?;
    (digits.len() == 8 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

fn open_segment(path: &Path, direct: bool, create: bool) -> io::Result<File> {
    let mut o = OpenOptions::new();
    if create {
        o.read(true).write(true).create_new(true);
    } else {
        o.read(true);
    }
    if direct {
        o.custom_flags(libc::O_DIRECT);
    }
    o.open(path)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A buffer of `len` bytes whose start is aligned for `O_DIRECT`.
struct Aligned {
    buf: Vec<u8>,
    start: usize,
    len: usize,
}

impl Aligned {
    fn zeroed(len: usize) -> Self {
        let buf = vec![0u8; len + ALIGN];
        let start = buf.as_ptr().align_offset(ALIGN);
        Self { buf, start, len }
    }
    /// A buffer with no room yet: appending allocates.
    fn empty() -> Self {
        Self {
            buf: Vec::new(),
            start: 0,
            len: 0,
        }
    }
    /// The bytes it can hold from its aligned start, counted without the
    /// alignment slack: the length it was made with, a whole number of
    /// blocks once it has grown.
    fn capacity(&self) -> usize {
        self.buf.len().saturating_sub(ALIGN)
    }
    /// Makes room for `need` bytes, moving to a larger buffer (a power of
    /// two, and so a whole number of blocks) when they do not fit.
    fn reserve(&mut self, need: usize) {
        if need > self.capacity() {
            let mut grown = Self::zeroed(need.next_power_of_two().max(ALIGN));
            grown.buf[grown.start..grown.start + self.len].copy_from_slice(self.bytes());
            grown.len = self.len;
            *self = grown;
        }
    }
    /// Appends `bytes`.
    fn push(&mut self, bytes: &[u8]) {
        let need = self.len + bytes.len();
        self.reserve(need);
        self.buf[self.start + self.len..self.start + need].copy_from_slice(bytes);
        self.len = need;
    }
    /// Zeroes from the end of the bytes to the next block boundary, and
    /// takes those zeroes in.
    fn pad_to_block(&mut self) {
        let end = round_up(self.len as u64) as usize;
        self.reserve(end);
        self.buf[self.start + self.len..self.start + end].fill(0);
        self.len = end;
    }
    fn bytes(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.start + self.len]
    }
}

fn round_up(n: u64) -> u64 {
    n.div_ceil(ALIGN as u64) * ALIGN as u64
}

fn round_down(n: u64) -> u64 {
    n / ALIGN as u64 * ALIGN as u64
}

/// Reads envelopes back; cheap to clone, usable from any task.
#[derive(Debug, Clone)]
pub(crate) struct LogReader {
    dir: PathBuf,
    direct: bool,
}

impl LogReader {
    /// The envelopes at `refs`, in their order; `None` for one whose segment
    /// is gone (every row pointing into it was deleted since it was read).
    /// Blocking.
    pub(crate) fn read(&self, refs: &[LogRef]) -> io::Result<Vec<Option<Arc<str>>>> {
        if let Some(r) = refs.iter().find(|r| r.len > MAX_ENVELOPE) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "envelope log segment {}: a length of {} at {}",
                    r.seg, r.len, r.off
                ),
            ));
        }
        let mut out: Vec<Option<Arc<str>>> = vec![None; refs.len()];
        let mut order: Vec<usize> = (0..refs.len()).collect();
        order.sort_by_key(|&i| (refs[i].seg, refs[i].off));
        let mut i = 0;
        while i < order.len() {
            let seg = refs[order[i]].seg;
            let file = match open_segment(&segment_path(&self.dir, seg), self.direct, false) {
                Ok(f) => Some(f),
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => return Err(e),
            };
            // One read per run of nearby envelopes of this segment.
            while i < order.len() && refs[order[i]].seg == seg {
                let first = refs[order[i]];
                let mut end = first.off + u64::from(first.len);
                let mut j = i + 1;
                while j < order.len() {
                    let r = refs[order[j]];
                    let next = (r.off + u64::from(r.len)).max(end);
                    if r.seg != seg || r.off > end + READ_GAP || next - first.off > READ_MAX {
                        break;
                    }
                    end = next;
                    j += 1;
                }
                if let Some(file) = &file {
                    let from = round_down(first.off);
                    let mut buf = Aligned::zeroed((round_up(end) - from) as usize);
                    let got = read_at_most(file, buf.bytes_mut(), from)?;
                    for &k in &order[i..j] {
                        let r = refs[k];
                        let at = (r.off - from) as usize;
                        let bytes =
                            buf.bytes()[..got]
                                .get(at..at + r.len as usize)
                                .ok_or_else(|| {
                                    io::Error::new(
                                        io::ErrorKind::UnexpectedEof,
                                        format!(
                                            "envelope log segment {seg} ends before byte {end}"
                                        ),
                                    )
                                })?;
                        out[k] = Some(Arc::from(std::str::from_utf8(bytes).map_err(|_| {
                            io::Error::new(
                                io::ErrorKind::InvalidData,
                                format!("envelope log segment {seg}: not UTF-8 at {}", r.off),
                            )
                        })?));
                    }
                }
                i = j;
            }
        }
        Ok(out)
    }
}

/// Reads into `buf` from `at` until it is full or the file ends.
fn read_at_most(file: &File, buf: &mut [u8], at: u64) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], at + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Segments to remove once the deletes that emptied them are durable: the
/// store's WAL sync takes the list before it syncs and removes them after.
pub(crate) type Doomed = Arc<std::sync::Mutex<Vec<PathBuf>>>;

/// The appending side, owned by the store's writer.
pub(crate) struct EnvelopeLog {
    reader: LogReader,
    seg: u32,
    file: Arc<File>,
    /// Where the next transaction's bytes start: always a block boundary,
    /// so a write never touches bytes of an earlier transaction.
    end: u64,
    /// The bytes appended in the transaction in progress and not yet
    /// handed to a write, already in a buffer a write can take as it is.
    pending: Aligned,
    /// A write of this transaction's bytes under way (started while the
    /// transaction's rows are still being inserted), with its buffer.
    inflight: Option<tokio::task::JoinHandle<(io::Result<()>, Aligned)>>,
    /// This transaction has appended bytes (pending or written): the
    /// segment may not change until it ends.
    open: bool,
    /// The buffer of the last write, kept between flushes to append into
    /// next: a new one of a megabyte or more would come from fresh pages
    /// each time.
    scratch: Option<Aligned>,
    /// The last write failed: the next transaction starts a new segment.
    broken: bool,
    /// Rows pointing into each segment (never below the truth).
    live: HashMap<u32, u64>,
    /// Rows of each segment deleted in the transaction in progress.
    deleted: HashMap<u32, u64>,
    /// Rows pointing at this transaction's appends, counted once written.
    added: u64,
    doomed: Doomed,
}

impl EnvelopeLog {
    /// Opens the log in `dir` (made if missing), given how many rows point
    /// into each segment; segments no row points into are removed, and a
    /// new one is started. The caller has made the database durable first,
    /// so that no delete these counts reflect can still be undone. Blocking.
    ///
    /// # Errors
    /// I/O errors, and a segment rows point into that is missing.
    pub(crate) fn open(dir: &Path, live: HashMap<u32, u64>) -> io::Result<Self> {
        if !dir.exists() {
            std::fs::create_dir_all(dir)?;
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(parent)?;
            }
        }
        let mut last = live.keys().copied().max().unwrap_or(0);
        let mut found = std::collections::HashSet::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let Some(seg) = entry.file_name().to_str().and_then(segment_of) else {
                continue;
            };
            last = last.max(seg);
            if live.contains_key(&seg) {
                found.insert(seg);
            } else {
                std::fs::remove_file(entry.path())?;
            }
        }
        if let Some(missing) = live.keys().find(|seg| !found.contains(seg)) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "segment {} is missing, and {} mailbox rows point into it; restore it from the backup the database came from",
                    segment_path(dir, *missing).display(),
                    live[missing]
                ),
            ));
        }
        let seg = last
            .checked_add(1)
            .ok_or_else(|| io::Error::other("the envelope log has run out of segment numbers"))?;
        let (file, direct) = new_segment(dir, seg, None)?;
        Ok(Self {
            reader: LogReader {
                dir: dir.to_path_buf(),
                direct,
            },
            seg,
            file: Arc::new(file),
            end: 0,
            pending: Aligned::empty(),
            inflight: None,
            open: false,
            scratch: None,
            broken: false,
            live,
            deleted: HashMap::new(),
            added: 0,
            doomed: Doomed::default(),
        })
    }

    pub(crate) fn reader(&self) -> LogReader {
        self.reader.clone()
    }

    /// The segments waiting for the WAL sync to remove them.
    pub(crate) fn doomed(&self) -> Doomed {
        self.doomed.clone()
    }

    /// Whether bytes are written with `O_DIRECT`.
    #[cfg(test)]
    pub(crate) fn direct(&self) -> bool {
        self.reader.direct
    }

    /// The segment being appended to.
    #[cfg(test)]
    pub(crate) fn segment(&self) -> u32 {
        self.seg
    }

    /// Starts a new segment (blocking; once per [`SEGMENT_BYTES`]).
    fn rotate(&mut self) -> io::Result<()> {
        let seg = self
            .seg
            .checked_add(1)
            .ok_or_else(|| io::Error::other("the envelope log has run out of segment numbers"))?;
        let (file, _) = new_segment(&self.reader.dir, seg, Some(self.reader.direct))?;
        let old = std::mem::replace(&mut self.seg, seg);
        self.file = Arc::new(file);
        self.end = 0;
        self.broken = false;
        self.remove_if_unused(old);
        Ok(())
    }

    /// Where `envelope` will be once this transaction's bytes are flushed.
    /// Blocking when it starts a new segment.
    pub(crate) fn append(&mut self, envelope: &str) -> io::Result<LogRef> {
        if !self.open && (self.broken || self.end >= SEGMENT_BYTES) {
            self.rotate()?;
        }
        let len = u32::try_from(envelope.len())
            .ok()
            .filter(|&n| n <= MAX_ENVELOPE)
            .ok_or_else(|| io::Error::other("an envelope too large for the log"))?;
        let r = LogRef {
            seg: self.seg,
            off: self.end + self.pending.len as u64,
            len,
        };
        self.pending.push(envelope.as_bytes());
        self.open = true;
        Ok(r)
    }

    /// `rows` rows pointing at this transaction's appends were inserted.
    pub(crate) fn added(&mut self, rows: u64) {
        self.added += rows;
    }

    /// A row pointing into `seg` was deleted in this transaction.
    pub(crate) fn deleted(&mut self, seg: u32, rows: u64) {
        *self.deleted.entry(seg).or_default() += rows;
    }

    /// Starts writing (and syncing) what this transaction has appended so
    /// far, unless a write is already under way: the insert of the rows
    /// that point at the bytes then overlaps the disk's `fdatasync`, which
    /// [`EnvelopeLog::flush`] waits for. Offsets of later appends follow the
    /// bytes handed over.
    pub(crate) fn start_flush(&mut self) {
        if self.pending.len == 0 || self.inflight.is_some() {
            return;
        }
        let at = self.end;
        let written = self.pending.len;
        // The appends' own buffer is written; later appends go to the
        // buffer of the last write.
        let next = self.scratch.take().map_or_else(Aligned::empty, |mut b| {
            b.len = 0;
            b
        });
        let mut buf = std::mem::replace(&mut self.pending, next);
        buf.pad_to_block();
        // Taken now, whatever becomes of the write: a failed one marks the
        // log broken (the next transaction starts a new segment), and the
        // bytes of an abandoned one are never written over.
        self.end = round_up(at + written as u64);
        let file = self.file.clone();
        self.inflight = Some(tokio::task::spawn_blocking(move || {
            let done = file
                .write_all_at(buf.bytes(), at)
                .and_then(|()| file.sync_data());
            (done, buf)
        }));
    }

    /// Writes this transaction's appends and makes them durable; to be
    /// called, and to succeed, before the transaction commits.
    pub(crate) async fn flush(&mut self) -> io::Result<()> {
        let mut done = Ok(());
        while done.is_ok() {
            self.start_flush();
            let Some(write) = self.inflight.take() else {
                break;
            };
            done = write
                .await
                .map_err(io::Error::other)
                .and_then(|(done, buf)| {
                    self.scratch = (buf.capacity() <= KEEP_BYTES).then_some(buf);
                    done
                });
        }
        self.reset_pending();
        self.open = false;
        // Counted even if the write failed: the rows will not commit then,
        // and a count above the truth only keeps a segment longer.
        *self.live.entry(self.seg).or_default() += std::mem::take(&mut self.added);
        if done.is_err() {
            self.broken = true;
        }
        done
    }

    /// Empties the pending buffer, and lets a large one go.
    fn reset_pending(&mut self) {
        self.pending.len = 0;
        if self.pending.capacity() > KEEP_BYTES {
            self.pending = Aligned::empty();
        }
    }

    /// The transaction committed: its deletes count.
    pub(crate) fn committed(&mut self) {
        for (seg, rows) in std::mem::take(&mut self.deleted) {
            if let Some(n) = self.live.get_mut(&seg) {
                *n = n.saturating_sub(rows);
            }
            self.remove_if_unused(seg);
        }
    }

    /// The transaction was abandoned: forget its appends and deletes.
    pub(crate) fn rolled_back(&mut self) {
        // A write under way finishes on its own; its bytes are dead space
        // (the next transaction's start after them). Its outcome is never
        // looked at, so the next transaction starts a new segment: sharing
        // the file, its sync could be the one to take (and hide) this
        // write's error, for a buffered file.
        if self.inflight.take().is_some() {
            self.broken = true;
        }
        self.open = false;
        self.reset_pending();
        self.deleted.clear();
        self.added = 0;
    }

    /// Hands a segment no row points into (other than the current one) to
    /// the WAL sync, which removes it once the deletes are durable: a power
    /// cut before that could bring the rows back.
    fn remove_if_unused(&mut self, seg: u32) {
        if seg == self.seg || self.live.get(&seg).is_some_and(|&n| n > 0) {
            return;
        }
        self.live.remove(&seg);
        self.doomed
            .lock()
            .expect("doomed lock")
            .push(segment_path(&self.reader.dir, seg));
    }
}

/// Largest envelope the log takes or reads (far above the frame limit).
const MAX_ENVELOPE: u32 = 64 << 20;

/// Makes segment `seg`, with `O_DIRECT` if `direct` says so or, when
/// `None`, if a first aligned write shows the file system takes it (tmpfs
/// does not, and some take the flag but refuse the write); syncs the
/// folder. Returns the file and whether it is direct.
fn new_segment(dir: &Path, seg: u32, direct: Option<bool>) -> io::Result<(File, bool)> {
    let path = segment_path(dir, seg);
    let probe = |f: &File| -> io::Result<()> {
        f.write_all_at(Aligned::zeroed(ALIGN).bytes(), 0)?;
        f.set_len(0)
    };
    let (file, direct) = match direct {
        Some(direct) => (open_segment(&path, direct, true)?, direct),
        None => match open_segment(&path, true, true).and_then(|f| probe(&f).map(|()| f)) {
            Ok(f) => (f, true),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                let _ = std::fs::remove_file(&path);
                (open_segment(&path, false, true)?, false)
            }
            Err(e) => return Err(e),
        },
    };
    sync_dir(dir)?;
    Ok((file, direct))
}

/// Removes the segments in `doomed` (after a sync made their deletes
/// durable); one that cannot be removed goes at the next start.
pub(crate) fn remove_segments(doomed: Vec<PathBuf>) {
    for path in doomed {
        if let Err(e) = std::fs::remove_file(&path)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(segment = %path.display(), cause = %e, "cannot remove an unused envelope log segment");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path) -> Vec<u32> {
        let mut v: Vec<u32> = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| segment_of(e.unwrap().file_name().to_str().unwrap()))
            .collect();
        v.sort_unstable();
        v
    }

    fn text(n: usize, c: char) -> String {
        std::iter::repeat_n(c, n).collect()
    }

    #[tokio::test]
    async fn appends_read_back_across_flushes_and_unaligned_tails() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = EnvelopeLog::open(dir.path(), HashMap::new()).unwrap();
        let mut refs = Vec::new();
        let mut want = Vec::new();
        // Sizes that leave every kind of partial block behind a flush.
        for (round, sizes) in [[1usize, 4095, 2460], [4096, 7, 9000], [2460, 2460, 1]]
            .iter()
            .enumerate()
        {
            for (k, &n) in sizes.iter().enumerate() {
                let s = text(n, char::from(b'a' + (round * 3 + k) as u8));
                refs.push(log.append(&s).unwrap());
                log.added(1);
                want.push(Some(Arc::<str>::from(s)));
            }
            log.flush().await.unwrap();
            log.committed();
        }
        assert_eq!(log.reader().read(&refs).unwrap(), want);
        // In any order, and a few at a time.
        let mut back: Vec<LogRef> = refs.iter().rev().copied().collect();
        back.swap(0, 4);
        let got = log.reader().read(&back).unwrap();
        let mut rev: Vec<Option<Arc<str>>> = want.iter().rev().cloned().collect();
        rev.swap(0, 4);
        assert_eq!(got, rev);
        if cfg!(target_os = "linux") {
            // /tmp here is ext4; on tmpfs this would be the buffered fallback.
            eprintln!("O_DIRECT: {}", log.direct());
        }
    }

    #[tokio::test]
    async fn a_rolled_back_transaction_leaves_no_trace() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = EnvelopeLog::open(dir.path(), HashMap::new()).unwrap();
        let a = log.append("first").unwrap();
        log.added(1);
        log.flush().await.unwrap();
        log.committed();
        let b = log.append("never committed").unwrap();
        log.added(1);
        log.rolled_back();
        let c = log.append("second").unwrap();
        log.added(1);
        assert_eq!(c.off, b.off, "the abandoned bytes are reused");
        log.flush().await.unwrap();
        log.committed();
        let got = log.reader().read(&[a, c]).unwrap();
        assert_eq!(got, [Some("first".into()), Some("second".into())]);
        assert_eq!(log.live.get(&log.seg), Some(&2));
    }

    #[tokio::test]
    async fn a_write_started_early_and_bytes_appended_after_it_all_commit() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = EnvelopeLog::open(dir.path(), HashMap::new()).unwrap();
        let a = log.append(&text(5000, 'a')).unwrap();
        log.added(1);
        log.start_flush();
        // A second start while the first write is under way does nothing:
        // the flush writes these bytes after it.
        let b = log.append(&text(3000, 'b')).unwrap();
        log.added(1);
        log.start_flush();
        assert!(
            b.off >= round_up(a.off + u64::from(a.len)),
            "{b:?} overlaps {a:?}"
        );
        log.flush().await.unwrap();
        log.committed();
        assert_eq!(log.live.get(&log.seg), Some(&2));
        let got = log.reader().read(&[a, b]).unwrap();
        assert_eq!(
            got,
            [Some(text(5000, 'a').into()), Some(text(3000, 'b').into())]
        );
    }

    #[tokio::test]
    async fn bytes_of_an_abandoned_write_are_not_written_over() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = EnvelopeLog::open(dir.path(), HashMap::new()).unwrap();
        let a = log.append(&text(6000, 'a')).unwrap();
        log.added(1);
        log.start_flush();
        log.rolled_back();
        let b = log.append(&text(100, 'b')).unwrap();
        log.added(1);
        // The abandoned write may still be going, and no one will hear how
        // it went: the next transaction starts a segment of its own, not at
        // the old offset as with bytes never handed over.
        assert_eq!(b.seg, a.seg + 1, "{b:?} after {a:?}");
        log.flush().await.unwrap();
        log.committed();
        assert_eq!(log.live.get(&log.seg), Some(&1));
        assert_eq!(
            log.reader().read(&[b]).unwrap(),
            [Some(text(100, 'b').into())]
        );
    }

    #[tokio::test]
    async fn full_segments_rotate_and_go_when_their_last_row_does() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = EnvelopeLog::open(dir.path(), HashMap::new()).unwrap();
        let first = log.segment();
        let big = text(1 << 20, 'x');
        let mut refs = Vec::new();
        for _ in 1..SEGMENT_BYTES >> 20 {
            refs.push(log.append(&big).unwrap());
            log.added(1);
            log.flush().await.unwrap();
            log.committed();
        }
        // A transaction keeps its segment to its end, even once bytes it has
        // handed to a write have filled it.
        refs.push(log.append(&big).unwrap());
        log.start_flush();
        refs.push(log.append("tail, after the write started").unwrap());
        log.added(2);
        log.flush().await.unwrap();
        log.committed();
        assert!(refs.iter().all(|r| r.seg == first), "{refs:?}");
        // Full: the next transaction starts a new one.
        let r = log.append("in the new segment").unwrap();
        let second = log.segment();
        assert_eq!((r.seg, second), (first + 1, first + 1));
        log.added(1);
        log.flush().await.unwrap();
        log.committed();
        assert_eq!(files(dir.path()), [first, second]);

        // What the WAL sync does after each commit.
        let sync = |log: &EnvelopeLog| {
            let doomed = std::mem::take(&mut *log.doomed().lock().unwrap());
            remove_segments(doomed);
        };
        // Deleting all but one of the old rows keeps the segment.
        log.deleted(first, refs.len() as u64 - 1);
        log.committed();
        sync(&log);
        assert_eq!(files(dir.path()), [first, second]);
        // A rolled-back delete does not count.
        log.deleted(first, 1);
        log.rolled_back();
        log.committed();
        sync(&log);
        assert_eq!(files(dir.path()), [first, second]);
        log.deleted(first, 1);
        log.committed();
        assert_eq!(files(dir.path()), [first, second], "not before the sync");
        sync(&log);
        assert_eq!(files(dir.path()), [second]);
        assert_eq!(
            log.reader().read(&refs[..1]).unwrap(),
            [None],
            "a removed segment reads as gone rows"
        );
        assert_eq!(
            log.reader().read(&[r]).unwrap(),
            [Some("in the new segment".into())]
        );
    }

    #[tokio::test]
    async fn a_missing_segment_that_rows_point_into_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let live = HashMap::from([(7, 3)]);
        let e = EnvelopeLog::open(dir.path(), live).err().unwrap();
        assert!(e.to_string().contains("00000007.log is missing"), "{e}");
    }

    #[tokio::test]
    async fn opening_removes_unreferenced_segments_and_starts_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let (kept, a) = {
            let mut log = EnvelopeLog::open(dir.path(), HashMap::new()).unwrap();
            let a = log.append("kept").unwrap();
            log.added(1);
            log.flush().await.unwrap();
            log.committed();
            (log.segment(), a)
        };
        let orphan = {
            let live = HashMap::from([(kept, 1)]);
            let mut log = EnvelopeLog::open(dir.path(), live).unwrap();
            // Written, but the transaction never committed (a crash).
            log.append("orphaned").unwrap();
            log.added(1);
            log.flush().await.unwrap();
            log.segment()
        };
        assert_eq!(files(dir.path()), [kept, orphan]);
        let log = EnvelopeLog::open(dir.path(), HashMap::from([(kept, 1)])).unwrap();
        assert_eq!(files(dir.path()), [kept, orphan + 1]);
        assert_eq!(log.reader().read(&[a]).unwrap(), [Some("kept".into())]);
    }

    #[test]
    fn only_segment_names_count() {
        assert_eq!(segment_of("00000001.log"), Some(1));
        assert_eq!(segment_of("1.log"), None);
        assert_eq!(segment_of("0000000a.log"), None);
        assert_eq!(segment_of("00000001.log.tmp"), None);
    }
}
