//! The durable spool: a local on-disk log between a source and the rest of the pipeline.
//!
//! The MQTT source acknowledges (PUBACK) an event once [`Spool::append`] has taken it and a
//! [`Spool::sync`] has made it durable; one sync covers every record appended before it
//! (group commit), so the fsync cost is shared by a batch. When every measurement of every
//! record below some sequence number has been written to FHIR or dead-lettered, the
//! pipeline calls [`Spool::commit`], and the spool forgets those records. On start,
//! [`Spool::open`] hands back a [`Replay`] of the records that were durable but not
//! committed. This type is the synchronous core: no async, no clock; the task that drives it
//! decides when to sync (every N records or T milliseconds) and when to commit.
//!
//! ```
//! use pipeline::spool::{Spool, SpoolConfig, SpoolRecord};
//!
//! let dir = tempfile::tempdir()?;
//! let config = SpoolConfig::new(dir.path());
//! let record = SpoolRecord {
//!     body: br#"{"heartRate": 72}"#.to_vec(),
//!     properties: Default::default(),
//!     system_properties: Default::default(),
//!     ingestion_time: chrono::DateTime::UNIX_EPOCH,
//!     origin: "mqtt".into(),
//! };
//! {
//!     let (mut spool, replay) = Spool::open(&config)?;
//!     assert_eq!(replay.count(), 0);
//!     let seq = spool.append(&record)?;
//!     spool.sync()?; // now the event may be acknowledged
//!     assert_eq!(seq, 0);
//! }
//! let (mut spool, replay) = Spool::open(&config)?; // a restart
//! let replayed: Vec<_> = replay.collect::<Result<_, _>>()?;
//! assert_eq!(replayed, vec![(0, record)]);
//! spool.commit(1)?; // record 0 is written to FHIR
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Why a plain segment log
//!
//! The workload is a queue: append at one end, drop from the other, read back only after a
//! crash. Nothing is looked up by key and nothing is updated in place. An embedded store
//! (redb, fjall, sled) would give us a B-tree or LSM tree, its own write-ahead log under it,
//! compaction, and a file format we cannot inspect or repair with ordinary tools; each write
//! would go through two logs, and truncating the queue would be a range delete followed by
//! compaction instead of unlinking a file. Vector went the same way: its disk buffer v2
//! replaced LevelDB with plain sequential data files for consistent throughput and simple
//! recovery; Fluent Bit's filesystem storage likewise keeps chunks as plain files with a
//! CRC32. A segment log is about as much code as the glue around a store would be, its
//! crash behaviour is ours to state and test (below), and it needs no new dependency.
//!
//! # On disk
//!
//! In [`SpoolConfig::dir`]:
//!
//! * `segment-<first seq, 20 digits>.log`: append-only segments of about
//!   [`SpoolConfig::segment_bytes`] (a segment rolls before a record would take it past
//!   that; a larger record gets a segment of its own). An 8-byte header (magic and format
//!   version), then frames: `len: u32 LE | crc32: u32 LE | payload`, the CRC covering the
//!   length bytes and the payload. The payload holds the sequence number, the ingestion time,
//!   the origin, the two property maps as JSON text and the body as raw bytes (see the
//!   `record` module). Sequence numbers run on without gaps inside and across segments.
//! * `committed`: the watermark, every record below it is done; 20 bytes with a CRC, replaced
//!   atomically (write `committed.tmp`, fsync, rename, fsync the directory).
//! * `lock`: held with `flock` while a [`Spool`] is open, so that two processes configured
//!   with the same directory fail at start instead of interleaving their writes.
//!
//! Truncation is by whole segments: `commit(upto)` deletes every segment whose records are
//! all below `upto`. A segment holding any record at or above it is kept, and its committed
//! records are skipped by the next replay. When everything is committed the active segment
//! goes too, so [`Spool::bytes`] returns to zero and back-pressure lifts completely.
//!
//! # Crashes and damage
//!
//! * **Torn tail.** A crash can leave the end of the last segment as a partial frame, or as
//!   a frame whose CRC does not match (pages written out of order). Those records were
//!   appended but not synced, so never acknowledged: `open` cuts them off with a warning and
//!   appends go on from the last intact record. "The tail" means: no intact frame anywhere
//!   after the damage.
//! * **Damage in the middle** (an older segment, or the last one with intact frames after
//!   the damage: bit rot, a disk error, a bug) is never cut off. `open` succeeds, and the
//!   [`Replay`] yields a [`SpoolError::Corrupt`] item in place of the unreadable records,
//!   naming the file, the byte offset and the sequence numbers lost, then scans forward to
//!   the next intact frame (one with the right length, CRC and a sequence number that fits)
//!   and carries on. So the damage costs the damaged records and nothing after them. Failing
//!   `open` instead would stop the connector until someone deletes files by hand, which
//!   loses more. A segment whose header is wrong (not ours, or a future format) makes `open`
//!   fail if it is the last segment, since appending to it would be unsafe; an older one is
//!   reported by the replay like any other damage.
//! * **Damaged watermark.** Read as absent, with a warning: every record still on disk is
//!   replayed. Replays are harmless (identifiers are deterministic, merges idempotent); loss
//!   is not. A crash between deleting segments and writing the watermark is harmless the same
//!   way, and one between writing the watermark and deleting segments is finished by the
//!   next `open`.
//! * **Known limit.** A CRC mismatch in the last record of the last segment looks exactly
//!   like a torn write. If it was in fact a synced record damaged on the medium, it is lost
//!   with the warning; telling the two apart would cost a second write per sync.
//!
//! # Errors while running
//!
//! * A failed `append` (disk full, I/O error) leaves the spool as it was before the call:
//!   the record has no sequence number, every earlier record is still pending or on disk,
//!   and partial bytes are truncated away. Once space returns, appending works again.
//!   [`SpoolError::is_disk_full`] tells the caller to wait rather than to give up.
//! * A failed `fsync` poisons the spool: after one, Linux may have dropped the dirty pages
//!   and a retried fsync can report success for data that is gone, so the spool refuses
//!   further appends and syncs with [`SpoolError::Poisoned`]. The caller acknowledges none of
//!   the records since the last good sync and reopens the spool, which replays what really is
//!   on disk (the broker redelivers the rest).
//! * Records appended but not synced when the process stops may be lost (dropping a `Spool`
//!   writes nothing); they were never acknowledged. A clean shutdown calls `sync` first.
//!
//! # Why replay is an iterator
//!
//! The un-committed tail can be as large as [`SpoolConfig::max_bytes`] (a gigabyte by
//! default) after a long FHIR outage; decoding it into a `Vec` would hold all of it in memory
//! at once, more than the spool's whole point of keeping it on disk allows. [`Replay`] reads
//! one record at a time, with its own file handles, so the pipeline can process and commit
//! replayed records while new ones are appended; and it can report damage in place, as an
//! item, without failing the records around it. `open` itself reads only the last segment
//! (to find where it ends); older segments are read by the replay.

mod config;
mod error;
mod lock;
mod record;
mod replay;
mod segment;
mod watermark;

use std::collections::VecDeque;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use tracing::warn;

pub use config::{SpoolConfig, DEFAULT_MAX_BYTES, DEFAULT_SEGMENT_BYTES};
pub use error::{SpoolError, SpoolOp};
pub use record::{SpoolRecord, MAX_RECORD_BYTES};
pub use replay::Replay;

use lock::lock_dir;
use record::encode_frame;
use replay::ReplaySegment;
use segment::{SegmentFile, HEADER, HEADER_LEN};

/// Appended frames are written to the segment file once this many bytes are buffered (and on
/// every sync), so memory stays bounded however rarely the caller syncs.
const WRITE_BUFFER: usize = 256 * 1024;

/// The segment being appended to.
#[derive(Debug)]
struct Active {
    first_seq: u64,
    path: PathBuf,
    file: File,
    /// Bytes written to the file (the buffered ones not included).
    len: u64,
}

/// The durable spool; see the [module documentation](self).
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    /// Held for the spool's lifetime: the directory's `flock`.
    _lock: File,
    /// Closed segments, oldest first.
    closed: VecDeque<SegmentFile>,
    closed_bytes: u64,
    active: Option<Active>,
    /// Frames appended but not yet written to the active segment.
    pending: Vec<u8>,
    /// The frame being encoded.
    scratch: Vec<u8>,
    next_seq: u64,
    watermark: u64,
    /// Bytes were written to the active segment since its last fsync.
    unsynced: bool,
    /// A segment was created since the directory's last fsync.
    dir_dirty: bool,
    /// A failed write left bytes past `Active::len` that could not be truncated yet.
    needs_truncate: bool,
    poisoned: bool,
    /// Sequence number of the first record in `pending` (when it is not empty).
    pending_from: u64,
    fsyncs: u64,
}

impl fmt::Debug for Spool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Spool")
            .field("dir", &self.dir)
            .field("next_seq", &self.next_seq)
            .field("committed", &self.watermark)
            .field(
                "segments",
                &(self.closed.len() + usize::from(self.active.is_some())),
            )
            .field("bytes", &self.bytes())
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}

impl Spool {
    /// Opens (creating) the spool in `config.dir`. Returns it and a [`Replay`] of the records
    /// that are on disk and not committed, in order, with their sequence numbers.
    ///
    /// A torn tail of the last segment is cut off (with a warning); damage elsewhere is left
    /// in place and reported by the replay. Fails if the directory cannot be created or read,
    /// another process holds it, or the last segment is not a segment of this format.
    pub fn open(config: &SpoolConfig) -> Result<(Spool, Replay), SpoolError> {
        let dir = config.dir.clone();
        fs::create_dir_all(&dir).map_err(|e| SpoolError::io(SpoolOp::CreateDir, &dir, e))?;
        let lock = lock_dir(&dir)?;
        remove_if_present(&dir.join(watermark::TEMP))?;
        let watermark = watermark::read(&dir)?.unwrap_or(0);
        let mut fsyncs = 0;

        let mut segments = segment::list(&dir)?;
        // Segments wholly below the watermark: a commit stopped before it deleted them.
        let done = segments
            .windows(2)
            .take_while(|pair| pair[1].first_seq <= watermark)
            .count();
        for segment in segments.drain(..done) {
            remove_if_present(&segment.path)?;
        }

        let mut next_seq = watermark;
        let mut active = None;
        if let Some(last) = segments.pop() {
            let opened = open_last(last, &mut fsyncs)?;
            next_seq = next_seq.max(opened.1);
            active = Some(opened.0);
            segment::sync_dir(&dir)?;
            fsyncs += 1;
        }

        let mut replay_segments = Vec::with_capacity(segments.len() + 1);
        for (i, segment) in segments.iter().enumerate() {
            let upper = segments
                .get(i + 1)
                .map(|s| s.first_seq)
                .or(active.as_ref().map(|a: &Active| a.first_seq))
                .unwrap_or(next_seq);
            replay_segments.push(ReplaySegment {
                path: segment.path.clone(),
                first_seq: segment.first_seq,
                end: segment.len,
                upper,
            });
        }
        if let Some(active) = &active {
            replay_segments.push(ReplaySegment {
                path: active.path.clone(),
                first_seq: active.first_seq,
                end: active.len,
                upper: next_seq,
            });
        }

        let spool = Spool {
            dir,
            max_bytes: config.max_bytes.get(),
            segment_bytes: config.segment_bytes.get(),
            _lock: lock,
            closed_bytes: segments.iter().map(|s| s.len).sum(),
            closed: segments.into(),
            active,
            pending: Vec::new(),
            scratch: Vec::new(),
            next_seq,
            watermark,
            unsynced: false,
            dir_dirty: false,
            needs_truncate: false,
            poisoned: false,
            pending_from: 0,
            fsyncs,
        };
        Ok((spool, Replay::new(replay_segments, watermark)))
    }

    /// Appends a record (buffered: durable only after the next [`sync`](Self::sync)) and
    /// returns its sequence number, one more than the previous record's, across restarts.
    ///
    /// On error nothing changed: the record has no sequence number, and every record
    /// appended before it is still pending. Appending works again once the cause is gone
    /// (for [`SpoolError::is_disk_full`], once commits or the operator free space).
    pub fn append(&mut self, record: &SpoolRecord) -> Result<u64, SpoolError> {
        self.check_poisoned()?;
        self.scratch.clear();
        encode_frame(self.next_seq, record, &mut self.scratch)?;
        let frame_len = self.scratch.len() as u64;
        if let Some(active) = &self.active {
            let used = active.len + self.pending.len() as u64;
            if used > HEADER_LEN && used + frame_len > self.segment_bytes {
                self.roll()?;
            }
        }
        if self.active.is_none() {
            self.start_segment()?;
        }
        let before = self.pending.len();
        if before == 0 {
            self.pending_from = self.next_seq;
        }
        self.pending.extend_from_slice(&self.scratch);
        if self.scratch.capacity() > 4 * WRITE_BUFFER {
            self.scratch = Vec::new();
        }
        if self.pending.len() >= WRITE_BUFFER {
            if let Err(e) = self.write_pending() {
                self.pending.truncate(before);
                return Err(e);
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        Ok(seq)
    }

    /// Makes every appended record durable: writes the buffered frames, fsyncs the active
    /// segment, and fsyncs the directory if a segment was created since the last sync.
    /// Returns whether anything needed syncing. On error, no record since the previous
    /// successful sync may be acknowledged. A failed write (a full disk) keeps the records
    /// buffered and a later `sync` tries again; a failed fsync poisons the spool (see the
    /// module documentation).
    pub fn sync(&mut self) -> Result<bool, SpoolError> {
        self.check_poisoned()?;
        self.write_pending()?;
        let mut synced = false;
        if self.unsynced {
            if let Some(active) = &self.active {
                if let Err(e) = active.file.sync_data() {
                    self.poisoned = true;
                    return Err(SpoolError::io(SpoolOp::Sync, &active.path, e));
                }
                self.fsyncs += 1;
                synced = true;
            }
            self.unsynced = false;
        }
        if self.dir_dirty {
            if let Err(e) = segment::sync_dir(&self.dir) {
                self.poisoned = true;
                return Err(e);
            }
            self.fsyncs += 1;
            self.dir_dirty = false;
            synced = true;
        }
        Ok(synced)
    }

    /// Records that every record with a sequence number below `upto` is done (written to
    /// FHIR or dead-lettered): persists the watermark and deletes the segments wholly below
    /// it. A `upto` at or below the current watermark changes nothing.
    ///
    /// Segments are deleted before the watermark is written, so a commit frees space even
    /// on a full disk (a crash in between only means more replay). If the watermark still
    /// cannot be written for lack of space and everything is committed, the active segment
    /// is deleted too and the write retried.
    pub fn commit(&mut self, upto: u64) -> Result<(), SpoolError> {
        if upto > self.next_seq {
            return Err(SpoolError::CommitBeyondEnd {
                upto,
                next: self.next_seq,
            });
        }
        if upto <= self.watermark {
            return Ok(());
        }
        while let Some(oldest) = self.closed.front() {
            let upper = self
                .closed
                .get(1)
                .map(|s| s.first_seq)
                .or(self.active.as_ref().map(|a| a.first_seq))
                .unwrap_or(self.next_seq);
            if upper > upto {
                break;
            }
            remove_if_present(&oldest.path)?;
            self.closed_bytes -= oldest.len;
            self.closed.pop_front();
        }
        let all_done = upto == self.next_seq;
        match watermark::write(&self.dir, upto) {
            Ok(fsyncs) => self.fsyncs += fsyncs,
            Err(e) if e.is_disk_full() && all_done && self.active.is_some() => {
                warn!(
                    %e,
                    "Spool watermark cannot be written on a full disk; deleting the committed \
                     active segment first."
                );
                self.drop_active()?;
                self.fsyncs += watermark::write(&self.dir, upto)?;
            }
            Err(e) => return Err(e),
        }
        self.watermark = upto;
        if all_done && self.active.is_some() {
            self.drop_active()?;
        }
        Ok(())
    }

    /// A reader of the records from `from` on (at or above the committed watermark), as far as
    /// they are written now; [`refresh`](Self::refresh) extends it to what is appended later.
    /// Such a reader pauses at the end (its iterator yields `None`) and reads on after a
    /// refresh. This is how the pipeline takes its events: the source's task appends and
    /// syncs, the reader follows, so a slow FHIR server makes the spool grow, not memory.
    /// Call it and `refresh` right after a [`sync`](Self::sync) (what is written is then
    /// durable); the reader's own file handles let appends and commits go on meanwhile.
    pub fn reader(&self, from: u64) -> Replay {
        let mut r = Replay::following(Vec::new(), from);
        r.update(self.segments_now(from));
        r
    }

    /// Tells `reader` (from [`reader`](Self::reader)) what has been written since.
    pub fn refresh(&self, reader: &mut Replay) {
        reader.update(self.segments_now(0));
    }

    /// The segments as written now, without those wholly below `from`.
    fn segments_now(&self, from: u64) -> Vec<replay::ReplaySegment> {
        let mut out = Vec::with_capacity(self.closed.len() + 1);
        let mut segments: Vec<(&Path, u64, u64)> = self
            .closed
            .iter()
            .map(|s| (s.path.as_path(), s.first_seq, s.len))
            .collect();
        if let Some(a) = &self.active {
            segments.push((a.path.as_path(), a.first_seq, a.len));
        }
        // Records buffered and not yet written are not in the files.
        let written = if self.pending.is_empty() {
            self.next_seq
        } else {
            self.pending_from
        };
        for (i, (path, first_seq, len)) in segments.iter().enumerate() {
            let upper = segments.get(i + 1).map_or(written, |s| s.1);
            if upper <= from {
                continue;
            }
            out.push(replay::ReplaySegment {
                path: path.to_path_buf(),
                first_seq: *first_seq,
                end: *len,
                upper,
            });
        }
        out
    }

    /// Bytes the spool holds: its segment files plus the frames buffered for the active one.
    /// Committed records count until their segment is deleted.
    pub fn bytes(&self) -> u64 {
        self.closed_bytes + self.active.as_ref().map_or(0, |a| a.len) + self.pending.len() as u64
    }

    /// Whether [`bytes`](Self::bytes) has reached [`SpoolConfig::max_bytes`]: the caller
    /// stops reading from its source until commits free space. Appends still work (the
    /// limit is the caller's signal, not a drop).
    pub fn is_full(&self) -> bool {
        self.bytes() >= self.max_bytes
    }

    /// Fsyncs done since open (segments, watermark and directory), for metrics.
    pub fn fsyncs(&self) -> u64 {
        self.fsyncs
    }

    /// The sequence number the next [`append`](Self::append) will hand out.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The committed watermark: every record below it is done.
    pub fn committed(&self) -> u64 {
        self.watermark
    }

    fn check_poisoned(&self) -> Result<(), SpoolError> {
        if self.poisoned {
            return Err(SpoolError::Poisoned {
                path: self.dir.clone(),
            });
        }
        Ok(())
    }

    /// Writes the buffered frames to the active segment. On error the file is truncated
    /// back (or marked to be) and the buffer kept, so a later call can try again.
    fn write_pending(&mut self) -> Result<(), SpoolError> {
        let Some(active) = self.active.as_mut() else {
            return Ok(());
        };
        if self.needs_truncate {
            active
                .file
                .set_len(active.len)
                .map_err(|e| SpoolError::io(SpoolOp::Truncate, &active.path, e))?;
            self.needs_truncate = false;
        }
        if self.pending.is_empty() {
            return Ok(());
        }
        let written = (&active.file)
            .seek(SeekFrom::Start(active.len))
            .and_then(|_| (&active.file).write_all(&self.pending));
        // Bytes may have reached the file either way.
        self.unsynced = true;
        match written {
            Ok(()) => {
                active.len += self.pending.len() as u64;
                self.pending.clear();
                if self.pending.capacity() > 4 * WRITE_BUFFER {
                    self.pending = Vec::new();
                }
                Ok(())
            }
            Err(e) => {
                // Cut off the partial frame. If even that fails, try again before the next
                // write; a crash in between leaves a torn tail, which open cuts off.
                self.needs_truncate = active.file.set_len(active.len).is_err();
                Err(SpoolError::io(SpoolOp::Write, &active.path, e))
            }
        }
    }

    /// Forgets the records appended since the last successful write to the file (after a
    /// failed [`Spool::sync`] that did not poison the spool, e.g. a full disk): their sequence
    /// numbers are handed out again. Returns the next sequence number.
    pub fn discard_unsynced(&mut self) -> u64 {
        if !self.pending.is_empty() {
            self.next_seq = self.pending_from;
            self.pending.clear();
        }
        self.next_seq
    }

    /// Whether a failed fsync has poisoned the spool (it must be reopened).
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// Closes the active segment: writes its buffered frames and fsyncs it.
    fn roll(&mut self) -> Result<(), SpoolError> {
        self.write_pending()?;
        let Some(active) = self.active.as_ref() else {
            return Ok(());
        };
        if self.unsynced {
            if let Err(e) = active.file.sync_data() {
                self.poisoned = true;
                return Err(SpoolError::io(SpoolOp::Sync, &active.path, e));
            }
            self.fsyncs += 1;
            self.unsynced = false;
        }
        if let Some(active) = self.active.take() {
            self.closed_bytes += active.len;
            self.closed.push_back(SegmentFile {
                first_seq: active.first_seq,
                path: active.path,
                len: active.len,
            });
        }
        Ok(())
    }

    /// Starts a segment for the next record.
    fn start_segment(&mut self) -> Result<(), SpoolError> {
        let (path, file) = segment::create(&self.dir, self.next_seq)?;
        self.active = Some(Active {
            first_seq: self.next_seq,
            path,
            file,
            len: HEADER_LEN,
        });
        self.unsynced = true;
        self.dir_dirty = true;
        Ok(())
    }

    /// Deletes the active segment, all of whose records are committed (buffered ones too).
    fn drop_active(&mut self) -> Result<(), SpoolError> {
        if let Some(active) = &self.active {
            remove_if_present(&active.path)?;
        }
        self.active = None;
        self.pending.clear();
        self.unsynced = false;
        self.needs_truncate = false;
        Ok(())
    }
}

/// Opens the last segment for appending: repairs a torn creation, checks the header, cuts
/// off a torn tail, and fsyncs it so that what is replayed is durable. Returns the segment
/// and the next sequence number.
fn open_last(last: SegmentFile, fsyncs: &mut u64) -> Result<(Active, u64), SpoolError> {
    let path = last.path;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| SpoolError::io(SpoolOp::Open, &path, e))?;
    let mut len = last.len;
    if len < HEADER_LEN {
        warn!(
            path = %path.display(),
            len,
            "Spool segment was cut short while being created; starting it afresh."
        );
        file.set_len(0)
            .map_err(|e| SpoolError::io(SpoolOp::Truncate, &path, e))?;
        (&file)
            .seek(SeekFrom::Start(0))
            .and_then(|_| (&file).write_all(&HEADER))
            .map_err(|e| SpoolError::io(SpoolOp::Write, &path, e))?;
        len = HEADER_LEN;
    } else {
        let mut reader = &file;
        let intact = reader
            .seek(SeekFrom::Start(0))
            .and_then(|_| segment::check_header(&mut reader))
            .map_err(|e| SpoolError::io(SpoolOp::Read, &path, e))?;
        if !intact {
            return Err(SpoolError::BadHeader { path });
        }
    }
    let scan = segment::scan_tail(&file, &path, last.first_seq, len)?;
    for (offset, reason) in &scan.damaged {
        warn!(
            path = %path.display(),
            offset,
            reason,
            "Spool segment is damaged in the middle; the replay reports the records lost and \
             goes on after them."
        );
    }
    if let Some((offset, reason)) = scan.torn {
        warn!(
            path = %path.display(),
            offset,
            reason,
            dropped_bytes = len - offset,
            "Spool segment ends in a torn record (appended, never synced, so never \
             acknowledged); cutting it off."
        );
        file.set_len(offset)
            .map_err(|e| SpoolError::io(SpoolOp::Truncate, &path, e))?;
        len = offset;
    }
    file.sync_data()
        .map_err(|e| SpoolError::io(SpoolOp::Sync, &path, e))?;
    *fsyncs += 1;
    let active = Active {
        first_seq: last.first_seq,
        path,
        file,
        len,
    };
    Ok((active, scan.next_seq))
}

/// Deletes a file; one that is already gone is fine.
fn remove_if_present(path: &Path) -> Result<(), SpoolError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(SpoolError::io(SpoolOp::Remove, path, e)),
    }
}
