//! One spooled event and its on-disk frame.
//!
//! A frame is
//!
//! ```text
//! len: u32 LE | crc: u32 LE | payload: len bytes
//! ```
//!
//! where `crc` is CRC-32 (IEEE) over the four `len` bytes followed by the payload, so a
//! damaged length is caught like damaged data. The payload is, all integers little-endian:
//!
//! ```text
//! seq: u64 | ingestion secs: i64 | ingestion nanos: u32
//! origin len: u32 | origin (UTF-8)
//! properties len: u32 | properties (JSON object text)
//! system properties len: u32 | system properties (JSON object text)
//! body (raw bytes, the rest of the payload)
//! ```
//!
//! The body is the event's bytes as they arrived, never re-encoded. The two property maps
//! are small and schemaless, so JSON text is the simplest faithful encoding of them.

use std::io::{self, Read};

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::SpoolError;

/// One event as the spool keeps it: what a source hands to the pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct SpoolRecord {
    /// The event's payload, byte for byte.
    pub body: Vec<u8>,
    /// Application properties (MQTT v5 user properties, Event Hubs properties).
    pub properties: Map<String, Value>,
    /// Transport properties (topic, enqueued time, partition, ...).
    pub system_properties: Map<String, Value>,
    /// When the connector received the event.
    pub ingestion_time: DateTime<Utc>,
    /// Which source the event came from (for example `mqtt`), for metrics and dead letters.
    pub origin: String,
}

/// Bytes in front of every payload: its length and its checksum.
pub(crate) const FRAME_HEADER: u64 = 8;

/// The largest payload a frame may hold: 256 MiB, MQTT's largest packet. A length field
/// above it is corruption, so replay never allocates more than this for one record.
pub const MAX_RECORD_BYTES: u64 = 256 * 1024 * 1024;

/// The smallest payload: every fixed field present, every variable one empty.
pub(crate) const MIN_PAYLOAD: u64 = 8 + 8 + 4 + 4 + 4 + 4;

/// Why a frame cannot be used.
pub(crate) type BadFrame = &'static str;

/// What [`read_frame`] found at the reader's position.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Frame {
    /// No bytes left before the end.
    End,
    /// A frame with a valid checksum; its payload is in the buffer.
    Valid,
    /// The bytes there are not a whole, intact frame.
    Bad(BadFrame),
}

/// CRC-32 of a frame: the length bytes, then the payload.
pub(crate) fn frame_crc(len: [u8; 4], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&len);
    hasher.update(payload);
    hasher.finalize()
}

/// Whether a frame length is one [`encode_frame`] could have written.
pub(crate) fn plausible_len(len: u64) -> bool {
    (MIN_PAYLOAD..=MAX_RECORD_BYTES).contains(&len)
}

/// Appends the frame of `record` with sequence number `seq` to `out`. On error `out` is
/// left as it was.
pub(crate) fn encode_frame(
    seq: u64,
    record: &SpoolRecord,
    out: &mut Vec<u8>,
) -> Result<(), SpoolError> {
    let start = out.len();
    let result = encode_into(seq, record, out, start);
    if result.is_err() {
        out.truncate(start);
    }
    result
}

fn encode_into(
    seq: u64,
    record: &SpoolRecord,
    out: &mut Vec<u8>,
    start: usize,
) -> Result<(), SpoolError> {
    let too_large = |len: u64| SpoolError::RecordTooLarge {
        len,
        max: MAX_RECORD_BYTES,
    };
    // Refuse the obvious cases before copying anything.
    let fixed = (record.origin.len() as u64).saturating_add(record.body.len() as u64);
    if fixed.saturating_add(MIN_PAYLOAD) > MAX_RECORD_BYTES {
        return Err(too_large(fixed.saturating_add(MIN_PAYLOAD)));
    }
    out.extend_from_slice(&[0; FRAME_HEADER as usize]);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&record.ingestion_time.timestamp().to_le_bytes());
    out.extend_from_slice(&record.ingestion_time.timestamp_subsec_nanos().to_le_bytes());
    // The origin's length fits: it was checked against MAX_RECORD_BYTES above.
    out.extend_from_slice(&(record.origin.len() as u32).to_le_bytes());
    out.extend_from_slice(record.origin.as_bytes());
    for map in [&record.properties, &record.system_properties] {
        let at = out.len();
        out.extend_from_slice(&[0; 4]);
        serde_json::to_writer(&mut *out, map).map_err(SpoolError::Encode)?;
        let json_len = (out.len() - at - 4) as u64;
        if json_len > MAX_RECORD_BYTES {
            return Err(too_large(json_len));
        }
        out[at..at + 4].copy_from_slice(&(json_len as u32).to_le_bytes());
    }
    out.extend_from_slice(&record.body);
    let payload_len = (out.len() - start) as u64 - FRAME_HEADER;
    if payload_len > MAX_RECORD_BYTES {
        return Err(too_large(payload_len));
    }
    let len = (payload_len as u32).to_le_bytes();
    let crc = frame_crc(len, &out[start + FRAME_HEADER as usize..]);
    out[start..start + 4].copy_from_slice(&len);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// The sequence number a payload starts with.
pub(crate) fn payload_seq(payload: &[u8]) -> Option<u64> {
    let bytes = payload.get(..8)?;
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

/// Decodes a payload whose checksum has been verified.
pub(crate) fn decode_payload(payload: &[u8]) -> Result<(u64, SpoolRecord), BadFrame> {
    let mut cursor = Cursor(payload);
    let seq = cursor.u64()?;
    let secs = cursor.i64()?;
    let nanos = cursor.u32()?;
    let ingestion_time =
        DateTime::from_timestamp(secs, nanos).ok_or("ingestion time out of range")?;
    let origin_len = cursor.u32()?;
    let origin = std::str::from_utf8(cursor.take(origin_len)?)
        .map_err(|_| "origin is not UTF-8")?
        .to_owned();
    let properties_len = cursor.u32()?;
    let properties = serde_json::from_slice(cursor.take(properties_len)?)
        .map_err(|_| "properties are not a JSON object")?;
    let system_len = cursor.u32()?;
    let system_properties = serde_json::from_slice(cursor.take(system_len)?)
        .map_err(|_| "system properties are not a JSON object")?;
    let record = SpoolRecord {
        body: cursor.0.to_vec(),
        properties,
        system_properties,
        ingestion_time,
        origin,
    };
    Ok((seq, record))
}

/// Reads the frame at the reader's position, which is `remaining` bytes before the end of
/// the segment, into `payload`. Consumes the frame's bytes when it is [`Frame::Valid`];
/// otherwise the reader's position is unspecified.
pub(crate) fn read_frame<R: Read>(
    reader: &mut R,
    remaining: u64,
    payload: &mut Vec<u8>,
) -> io::Result<Frame> {
    if remaining == 0 {
        return Ok(Frame::End);
    }
    if remaining < FRAME_HEADER {
        return Ok(Frame::Bad("partial frame header"));
    }
    let mut header = [0; FRAME_HEADER as usize];
    reader.read_exact(&mut header)?;
    let len_bytes = [header[0], header[1], header[2], header[3]];
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    let len = u64::from(u32::from_le_bytes(len_bytes));
    if !plausible_len(len) {
        return Ok(Frame::Bad("impossible frame length"));
    }
    if len > remaining - FRAME_HEADER {
        return Ok(Frame::Bad("frame runs past the end of the segment"));
    }
    // `len` is at most MAX_RECORD_BYTES, so this allocation is bounded.
    payload.resize(len as usize, 0);
    reader.read_exact(payload)?;
    if frame_crc(len_bytes, payload) != crc {
        return Ok(Frame::Bad("checksum mismatch"));
    }
    Ok(Frame::Valid)
}

/// A bounds-checked reader over a payload.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: u32) -> Result<&'a [u8], BadFrame> {
        let n = n as usize;
        if n > self.0.len() {
            return Err("field runs past the end of the record");
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], BadFrame> {
        let bytes = self.take(N as u32)?;
        bytes
            .try_into()
            .map_err(|_| "field runs past the end of the record")
    }

    fn u32(&mut self) -> Result<u32, BadFrame> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, BadFrame> {
        self.array().map(u64::from_le_bytes)
    }

    fn i64(&mut self) -> Result<i64, BadFrame> {
        self.array().map(i64::from_le_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn sample() -> SpoolRecord {
        let Value::Object(properties) = json!({"a": 1, "nested": {"b": [true, null, "x"]}}) else {
            unreachable!("a JSON object literal")
        };
        let Value::Object(system_properties) = json!({"topic": "devices/d1/telemetry"}) else {
            unreachable!("a JSON object literal")
        };
        SpoolRecord {
            body: vec![0, 159, 146, 150, b'{', 0xff],
            properties,
            system_properties,
            ingestion_time: DateTime::from_timestamp(1_700_000_000, 123_456_789)
                .expect("a valid timestamp"),
            origin: "mqtt".into(),
        }
    }

    fn decode_frame(frame: &[u8]) -> (u64, SpoolRecord) {
        let mut payload = Vec::new();
        let mut reader = frame;
        assert_eq!(
            read_frame(&mut reader, frame.len() as u64, &mut payload).expect("in memory"),
            Frame::Valid
        );
        assert!(reader.is_empty(), "the frame is consumed whole");
        decode_payload(&payload).expect("decodes")
    }

    #[test]
    fn frame_round_trips_every_field() {
        let record = sample();
        let mut frame = Vec::new();
        encode_frame(42, &record, &mut frame).expect("encodes");
        assert_eq!(decode_frame(&frame), (42, record));
    }

    #[test]
    fn body_is_stored_raw() {
        let record = sample();
        let mut frame = Vec::new();
        encode_frame(1, &record, &mut frame).expect("encodes");
        assert!(frame.ends_with(&record.body));
    }

    #[test]
    fn empty_record_is_the_smallest_payload() {
        let record = SpoolRecord {
            body: Vec::new(),
            properties: Map::new(),
            system_properties: Map::new(),
            ingestion_time: DateTime::UNIX_EPOCH,
            origin: String::new(),
        };
        let mut frame = Vec::new();
        encode_frame(0, &record, &mut frame).expect("encodes");
        // `{}` twice: the JSON text of the empty maps.
        assert_eq!(frame.len() as u64, FRAME_HEADER + MIN_PAYLOAD + 4);
        assert_eq!(decode_frame(&frame), (0, record));
    }

    #[test]
    fn too_large_body_is_refused_and_leaves_the_buffer_alone() {
        let mut record = sample();
        record.body = vec![0; MAX_RECORD_BYTES as usize];
        let mut out = vec![7, 7];
        let err = encode_frame(1, &record, &mut out).expect_err("too large");
        assert!(matches!(err, SpoolError::RecordTooLarge { .. }), "{err}");
        assert_eq!(out, [7, 7]);
    }

    #[test]
    fn every_damaged_byte_is_caught() {
        let mut frame = Vec::new();
        encode_frame(9, &sample(), &mut frame).expect("encodes");
        for at in 0..frame.len() {
            let mut damaged = frame.clone();
            damaged[at] ^= 0x01;
            let mut payload = Vec::new();
            let found = read_frame(&mut damaged.as_slice(), damaged.len() as u64, &mut payload)
                .expect("in memory");
            assert!(matches!(found, Frame::Bad(_)), "byte {at}: {found:?}");
        }
    }

    #[test]
    fn every_truncation_is_caught() {
        let mut frame = Vec::new();
        encode_frame(9, &sample(), &mut frame).expect("encodes");
        for len in 1..frame.len() {
            let mut payload = Vec::new();
            let found = read_frame(&mut &frame[..len], len as u64, &mut payload)
                .expect("the length check comes before any read past the end");
            assert!(matches!(found, Frame::Bad(_)), "length {len}: {found:?}");
        }
    }

    proptest! {
        /// Arbitrary bytes never panic the frame reader or the payload decoder.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut payload = Vec::new();
            let _ = read_frame(&mut bytes.as_slice(), bytes.len() as u64, &mut payload);
            let _ = decode_payload(&bytes);
        }

        /// Any record survives a round trip.
        #[test]
        fn arbitrary_records_round_trip(
            seq in any::<u64>(),
            body in proptest::collection::vec(any::<u8>(), 0..64),
            origin in ".{0,8}",
            key in "[a-z]{0,4}",
            value in any::<i64>(),
            secs in -62_000_000_000i64..250_000_000_000,
            nanos in 0u32..1_000_000_000,
        ) {
            let mut properties = Map::new();
            properties.insert(key, Value::from(value));
            let record = SpoolRecord {
                body,
                properties,
                system_properties: Map::new(),
                ingestion_time: DateTime::from_timestamp(secs, nanos).expect("in range"),
                origin,
            };
            let mut frame = Vec::new();
            encode_frame(seq, &record, &mut frame).expect("encodes");
            prop_assert_eq!(decode_frame(&frame), (seq, record));
        }
    }
}
