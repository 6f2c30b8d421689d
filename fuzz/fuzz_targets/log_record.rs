//! The log record payload decoder (`phb_store::logfile::decode_payload`,
//! the layout of docs/log-format.md), both ways, for entries that record an
//! applied event and entries that record a refusal (the optional trailer
//! `'R' ‖ u32be code ‖ u8 flags ‖ u32be len ‖ message` after the event).
//!
//! Asserts: arbitrary bytes never panic the decoder; whatever it accepts
//! re-encodes (`encode_record`) to a frame of the right length and CRC32C
//! around exactly the same payload bytes (the format has one encoding per
//! entry), and a refusal it accepts has flags 0, 1 or 3 and a UTF-8 message of
//! at most `MAX_REFUSAL_MESSAGE_BYTES`; an arbitrary entry built from the
//! same bytes (with or without a refusal) encodes to a record whose payload
//! decodes back to an equal entry, with `hash_is_valid` unchanged by the
//! round trip, unless its refusal message is longer than the bound, which
//! the decoder refuses; `LogEntry::sealed` gives a valid hash, and the hash
//! of a refusal entry differs from that of the applied entry with the same
//! fields and from the same refusal with the other flag; `encode_record`
//! only appends.

#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use phb_domain::chain::MAX_REFUSAL_MESSAGE_BYTES;
use phb_domain::{LogEntry, Refusal, SignedEvent};
use phb_store::logfile::{decode_payload, encode_record, FRAME_LEN, MAX_PAYLOAD};

fn frame(record: &[u8]) -> (&[u8], u32, u32) {
    let len = u32::from_be_bytes(record[0..4].try_into().expect("4 bytes"));
    let crc = u32::from_be_bytes(record[4..8].try_into().expect("4 bytes"));
    (&record[FRAME_LEN as usize..], len, crc)
}

fn encode(e: &LogEntry) -> Vec<u8> {
    let mut record = vec![0xAA; 3];
    encode_record(e, &mut record);
    assert_eq!(
        record[..3],
        [0xAA; 3],
        "encode_record overwrote what it appends to"
    );
    record.split_off(3)
}

fn check_frame(record: &[u8]) -> &[u8] {
    let (payload, len, crc) = frame(record);
    assert_eq!(len as usize, payload.len(), "frame length");
    assert!(len > 0 && len <= MAX_PAYLOAD);
    assert_eq!(crc, crc32c::crc32c(payload), "frame CRC");
    payload
}

fn check_record(record: &[u8]) -> LogEntry {
    decode_payload(check_frame(record)).expect("an encoded record does not decode")
}

/// A refusal from the input: none, or a code, a flag and a message (any
/// length: `cut` makes it one `Refusal::new` would keep).
fn refusal(u: &mut Unstructured<'_>) -> arbitrary::Result<Option<Refusal>> {
    let which = u8::arbitrary(u)?;
    if which < 96 {
        return Ok(None);
    }
    let code = match which % 4 {
        // The codes the writer records: NOT_FOUND, ALREADY_EXISTS,
        // PERMISSION_DENIED, FAILED_PRECONDITION, ABORTED.
        0 => [5, 6, 7, 9, 10][usize::from(which / 4) % 5],
        _ => u32::arbitrary(u)?,
    };
    let in_atomic_batch = bool::arbitrary(u)?;
    // Only valid flag combinations: first_in_batch implies in_atomic_batch.
    let first_in_batch = in_atomic_batch && bool::arbitrary(u)?;
    let message = String::arbitrary(u)?;
    let cut = which % 8 < 4;
    Ok(Some(if cut {
        let mut r = Refusal::new(code, in_atomic_batch, &message);
        r.first_in_batch = first_in_batch;
        r
    } else {
        Refusal {
            code,
            in_atomic_batch,
            first_in_batch,
            message,
        }
    }))
}

fuzz_target!(|data: &[u8]| {
    if let Some(entry) = decode_payload(data) {
        if let Some(r) = &entry.refusal {
            assert!(r.message.len() <= MAX_REFUSAL_MESSAGE_BYTES);
            assert!(matches!(r.flags(), 0 | 1 | 3), "flags {}", r.flags());
        }
        if data.len() <= MAX_PAYLOAD as usize {
            let record = encode(&entry);
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
    let Ok(refusal) = refusal(&mut u) else {
        return;
    };
    let Ok(event) = Vec::<u8>::arbitrary_take_rest(u) else {
        return;
    };
    let signed = SignedEvent {
        event,
        signer_id,
        signature,
    };
    let entry = LogEntry {
        sequence,
        recorded_at_micros,
        prev_hash,
        hash,
        signed: signed.clone(),
        refusal: refusal.clone(),
    };
    let sealed = LogEntry::sealed(
        prev_hash,
        sequence,
        recorded_at_micros,
        signed.clone(),
        refusal.clone(),
    );
    assert!(sealed.hash_is_valid(), "sealed entry with an invalid hash");
    let applied = LogEntry::next(prev_hash, sequence, recorded_at_micros, signed);
    assert!(applied.hash_is_valid());
    if let Some(r) = &refusal {
        // A refusal entry never shares a hash with the applied entry of the
        // same fields, nor with the refusal under the other flag.
        assert_ne!(sealed.hash, applied.hash, "refusal hashes as applied");
        let flipped = LogEntry::sealed(
            prev_hash,
            sequence,
            recorded_at_micros,
            applied.signed.clone(),
            Some(Refusal {
                in_atomic_batch: !r.in_atomic_batch,
                ..r.clone()
            }),
        );
        assert_ne!(sealed.hash, flipped.hash, "the flag is not hashed");
        if r.in_atomic_batch {
            let other_first = LogEntry::sealed(
                prev_hash,
                sequence,
                recorded_at_micros,
                applied.signed.clone(),
                Some(Refusal {
                    first_in_batch: !r.first_in_batch,
                    ..r.clone()
                }),
            );
            assert_ne!(
                sealed.hash, other_first.hash,
                "first_in_batch is not hashed"
            );
        }
        let unrefused = LogEntry {
            refusal: None,
            ..sealed.clone()
        };
        assert!(!unrefused.hash_is_valid(), "a refusal removed unnoticed");
    }
    let decodable = refusal
        .as_ref()
        .is_none_or(|r| r.message.len() <= MAX_REFUSAL_MESSAGE_BYTES);
    for e in [entry, sealed, applied] {
        let record = encode(&e);
        if e.refusal.is_some() && !decodable {
            // Longer than any refusal the ledger records: refused on read.
            assert_eq!(decode_payload(check_frame(&record)), None);
            continue;
        }
        let back = check_record(&record);
        assert_eq!(back.hash_is_valid(), e.hash_is_valid());
        assert_eq!(back, e);
    }
});
