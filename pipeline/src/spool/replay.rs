//! Streaming replay of the records not yet committed.

use std::fs::File;
use std::io::{BufReader, Seek, SeekFrom};
use std::ops::Range;
use std::path::PathBuf;

use tracing::warn;

use super::record::{decode_payload, payload_seq, read_frame, Frame, SpoolRecord, FRAME_HEADER};
use super::segment::{check_header, find_frame, HEADER_LEN};
use super::{SpoolError, SpoolOp};

/// One segment as it was when the spool was opened.
#[derive(Debug)]
pub(crate) struct ReplaySegment {
    pub path: PathBuf,
    pub first_seq: u64,
    /// Bytes to read: the segment's length at open. Appends made after it are not replayed.
    pub end: u64,
    /// The first sequence number that cannot be in this segment (the next segment's first).
    pub upper: u64,
}

#[derive(Debug)]
struct Cursor {
    segment: ReplaySegment,
    reader: BufReader<File>,
    pos: u64,
    /// The sequence number the next record should have.
    next: u64,
}

/// The records that were on disk and not committed when the spool was opened, oldest first,
/// read one at a time (memory stays at one record whatever the size of the tail).
///
/// Items are `Ok((seq, record))`, or an error in place of what could not be read:
/// [`SpoolError::Corrupt`] names the file, the byte offset and the sequence numbers that are
/// gone, and the replay then carries on with the next intact record, so damage never costs
/// more than the damaged records; [`SpoolError::Io`] means a segment could not be read now
/// (the replay carries on with the next segment; a reopen may read it). The caller decides
/// whether to go on (and logs the loss at ERROR) or to stop.
///
/// The replay reads its own file handles, independent of the [`Spool`](super::Spool): the
/// spool can be appended to and committed meanwhile, as long as `commit` only covers records
/// the replay has already yielded (which at-least-once processing implies).
#[derive(Debug)]
pub struct Replay {
    segments: std::collections::VecDeque<ReplaySegment>,
    current: Option<Cursor>,
    watermark: u64,
    queued: Option<(u64, SpoolRecord)>,
    payload: Vec<u8>,
    /// A reader that follows the spool ([`Spool::reader`](super::Spool::reader)): at the end
    /// of what it knows it pauses (yields `None`) instead of closing the last segment, and
    /// [`Spool::refresh`](super::Spool::refresh) tells it what was appended since.
    follow: bool,
    /// The first sequence number of the last segment opened (segments up to it are done).
    opened: Option<u64>,
    /// Set by `step` when a following reader reached the end of what it knows.
    paused: bool,
}

impl Replay {
    pub(crate) fn new(segments: Vec<ReplaySegment>, watermark: u64) -> Replay {
        Replay {
            segments: segments.into(),
            current: None,
            watermark,
            queued: None,
            payload: Vec::new(),
            follow: false,
            opened: None,
            paused: false,
        }
    }

    /// A replay that follows the spool from `from` on (see [`Spool::reader`](super::Spool::reader)).
    pub(crate) fn following(segments: Vec<ReplaySegment>, from: u64) -> Replay {
        let mut r = Replay::new(segments, from);
        r.follow = true;
        r
    }

    /// Takes the spool's segments as they are now: the current segment's new end, and the
    /// segments after it. A changed end drops the reader's read-ahead, which may hold bytes
    /// past the old end that a failed write has since cut off.
    pub(crate) fn update(&mut self, segments: Vec<ReplaySegment>) {
        let known = self
            .current
            .as_ref()
            .map(|c| c.segment.first_seq)
            .or(self.opened);
        if let Some(c) = self.current.as_mut() {
            match segments.iter().find(|s| s.first_seq == c.segment.first_seq) {
                Some(s) => {
                    if (s.end, s.upper) != (c.segment.end, c.segment.upper) {
                        c.segment.end = s.end;
                        c.segment.upper = s.upper;
                        if let Err(e) = c.reader.seek(SeekFrom::Start(c.pos)) {
                            warn!(path = %c.segment.path.display(), error = %e, "Spool segment cannot be re-read; reading on with the next one.");
                            self.current = None;
                        }
                    }
                }
                // Deleted: every record in it is committed (so read). Close it, or its disk
                // space stays taken while the file is open (on a full disk, for good).
                None => self.current = None,
            }
        }
        self.segments = segments
            .into_iter()
            .filter(|s| known.is_none_or(|k| s.first_seq > k))
            .collect();
    }

    /// An error for the sequence numbers in `lost` (those below the watermark are done
    /// anyway, and not reported), or `None` if none are left.
    fn loss(
        &self,
        path: &std::path::Path,
        offset: u64,
        reason: &'static str,
        lost: Range<u64>,
    ) -> Option<SpoolError> {
        let lost = lost.start.max(self.watermark)..lost.end;
        (!lost.is_empty()).then(|| SpoolError::Corrupt {
            path: path.to_owned(),
            offset,
            reason,
            lost,
        })
    }

    /// Opens the next segment; `Err` when it cannot be read at all.
    fn open_next(&mut self) -> Option<Result<(), SpoolError>> {
        let segment = self.segments.pop_front()?;
        self.opened = Some(segment.first_seq);
        let path = segment.path.clone();
        let opened = File::open(&path)
            .map_err(|e| SpoolError::io(SpoolOp::Open, &path, e))
            .and_then(|file| {
                let mut reader = BufReader::with_capacity(256 * 1024, file);
                let intact = segment.end >= HEADER_LEN
                    && check_header(&mut reader)
                        .map_err(|e| SpoolError::io(SpoolOp::Read, &path, e))?;
                Ok(intact.then_some(reader))
            });
        Some(match opened {
            Ok(Some(reader)) => {
                self.current = Some(Cursor {
                    next: segment.first_seq,
                    segment,
                    reader,
                    pos: HEADER_LEN,
                });
                Ok(())
            }
            Ok(None) => {
                match self.loss(
                    &path,
                    0,
                    "not a segment of this version (bad header)",
                    segment.first_seq..segment.upper,
                ) {
                    Some(e) => Err(e),
                    None => Ok(()),
                }
            }
            Err(e) => Err(e),
        })
    }

    /// Reads on in the current segment: an item to yield, or `None` to read on (the cursor
    /// is dropped when the segment is finished).
    fn step(&mut self) -> Option<Result<(u64, SpoolRecord), SpoolError>> {
        let cursor = self.current.as_mut()?;
        let path = cursor.segment.path.clone();
        let remaining = cursor.segment.end.saturating_sub(cursor.pos);
        let found = match read_frame(&mut cursor.reader, remaining, &mut self.payload) {
            Ok(found) => found,
            Err(e) => {
                self.current = None;
                return Some(Err(SpoolError::io(SpoolOp::Read, &path, e)));
            }
        };
        let at = cursor.pos;
        match found {
            Frame::End => {
                if self.follow && self.segments.is_empty() && cursor.next >= cursor.segment.upper {
                    self.paused = true; // more may be appended to it
                    return None;
                }
                let lost = cursor.next..cursor.segment.upper;
                self.current = None;
                self.loss(&path, at, "segment ends before its last record", lost)
                    .map(Err)
            }
            Frame::Valid => {
                cursor.pos += FRAME_HEADER + self.payload.len() as u64;
                let (next, upper) = (cursor.next, cursor.segment.upper);
                match decode_payload(&self.payload) {
                    Ok((seq, record)) if (next..upper).contains(&seq) => {
                        cursor.next = seq + 1;
                        if seq < self.watermark {
                            return None;
                        }
                        match self.loss(&path, at, "records missing before this one", next..seq) {
                            Some(e) => {
                                self.queued = Some((seq, record));
                                Some(Err(e))
                            }
                            None => Some(Ok((seq, record))),
                        }
                    }
                    Ok((seq, _)) => {
                        // An intact frame that does not belong here: nothing is lost by
                        // skipping it, as the sequence numbers it would fill are not missing.
                        warn!(
                            path = %path.display(),
                            offset = at,
                            seq,
                            expected = next,
                            "Spool record out of sequence; skipped."
                        );
                        None
                    }
                    Err(reason) => {
                        let seq = payload_seq(&self.payload).unwrap_or(next);
                        let lost = if (next..upper).contains(&seq) {
                            cursor.next = seq + 1;
                            next..seq + 1
                        } else {
                            next..next
                        };
                        self.loss(&path, at, reason, lost).map(Err)
                    }
                }
            }
            Frame::Bad(reason) => {
                let file = cursor.reader.get_ref();
                match find_frame(
                    file,
                    at + 1,
                    cursor.segment.end,
                    cursor.next..cursor.segment.upper,
                ) {
                    Ok(Some((found_at, seq))) => {
                        let lost = cursor.next..seq;
                        cursor.next = seq;
                        cursor.pos = found_at;
                        if let Err(e) = cursor.reader.seek(SeekFrom::Start(found_at)) {
                            self.current = None;
                            return Some(Err(SpoolError::io(SpoolOp::Read, &path, e)));
                        }
                        self.loss(&path, at, reason, lost).map(Err)
                    }
                    Ok(None) => {
                        let lost = cursor.next..cursor.segment.upper;
                        self.current = None;
                        self.loss(&path, at, reason, lost).map(Err)
                    }
                    Err(e) => {
                        self.current = None;
                        Some(Err(SpoolError::io(SpoolOp::Read, &path, e)))
                    }
                }
            }
        }
    }
}

impl Iterator for Replay {
    type Item = Result<(u64, SpoolRecord), SpoolError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(queued) = self.queued.take() {
            return Some(Ok(queued));
        }
        loop {
            if self.current.is_none() {
                match self.open_next()? {
                    Ok(()) => continue,
                    Err(e) => return Some(Err(e)),
                }
            }
            if let Some(item) = self.step() {
                return Some(item);
            }
            if std::mem::take(&mut self.paused) {
                return None;
            }
        }
    }
}
