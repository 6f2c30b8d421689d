//! The log record payload decoder (`phb_store::logfile::decode_payload`,
//! the layout of docs/log-format.md), both ways.
//!
//! Asserts: arbitrary bytes never panic the decoder; whatever it accepts
//! re-encodes (`encode_record`) to a frame of the right length and CRC32C
//! around exactly the same payload bytes (the format has one encoding per
//! entry); and an arbitrary entry built from the same bytes encodes to a
//! record whose payload decodes back to an equal entry, with `hash_is_valid`
//! unchanged by the round trip.

#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use phb_domain::{LogEntry, SignedEvent};
use phb_store::logfile::{decode_payload, encode_record, FRAME_LEN, MAX_PAYLOAD};

fn frame(record: &[u8]) -> (&[u8], u32, u32) {
    let len = u32::from_be_bytes(record[0..4].try_into().expect("4 bytes"));
    let crc = u32::from_be_bytes(record[4..8].try_into().expect("4 bytes"));
    (&record[FRAME_LEN as usize..], len, crc)
}

fn check_record(record: &[u8]) -> LogEntry {
    let (payload, len, crc) = frame(record);
    assert_eq!(len as usize, payload.len(), "frame length");
    assert!(len > 0 && len <= MAX_PAYLOAD);
    assert_eq!(crc, crc32c::crc32c(payload), "frame CRC");
    decode_payload(payload).expect("an encoded record does not decode")
}

fuzz_target!(|data: &[u8]| {
    if let Some(entry) = decode_payload(data) {
        if data.len() <= MAX_PAYLOAD as usize {
            let mut record = Vec::new();
            encode_record(&entry, &mut record);
            assert_eq!(
                frame(&record).0,
                data,
                "payload does not re-encode identically"
            );
            assert_eq!(check_record(&record), entry);
        }
    }

    let mut u = Unstructured::new(data);
    let Ok((sequence, recorded_at_micros, prev_hash, hash)) =
        <(u64, i64, [u8; 32], [u8; 32])>::arbitrary(&mut u)
    else {
        return;
    };
    let (Ok(signer_id), Ok(signature)) = (String::arbitrary(&mut u), Vec::<u8>::arbitrary(&mut u))
    else {
        return;
    };
    let Ok(event) = Vec::<u8>::arbitrary_take_rest(u) else {
        return;
    };
    let entry = LogEntry {
        sequence,
        recorded_at_micros,
        prev_hash,
        hash,
        signed: SignedEvent {
            event,
            signer_id,
            signature,
        },
    };
    let sealed = LogEntry::next(
        prev_hash,
        sequence,
        recorded_at_micros,
        entry.signed.clone(),
    );
    for e in [entry, sealed] {
        let mut record = vec![0xAA; 3];
        encode_record(&e, &mut record);
        assert_eq!(
            record[..3],
            [0xAA; 3],
            "encode_record overwrote what it appends to"
        );
        let back = check_record(&record[3..]);
        assert_eq!(back.hash_is_valid(), e.hash_is_valid());
        assert_eq!(back, e);
    }
});
