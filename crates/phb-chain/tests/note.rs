//! Signed notes and checkpoints: known answers from the C2SP spec and Go's
//! sumdb/note, a round trip, and strict refusals.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ed25519_dalek::SigningKey;
use phb_chain::merkle::{MemoryTree, EMPTY_ROOT};
use phb_chain::note::{
    key_id, open_note, parse_and_verify, parse_vkey, sign_checkpoint, sign_note, vkey, Checkpoint,
    NoteError, MAX_NOTE_BYTES,
};

/// The example of c2sp.org/signed-note ("Verifier keys", "Example";
/// C2SP/C2SP commit 5ba5ee8, signed-note.md).
const C2SP_VKEY: &str = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k";
const C2SP_NOTE: &str = "This is an example message.\n\n\u{2014} example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n";

/// The example of golang.org/x/mod/sumdb/note (package documentation in
/// note.go): its private key (`PRIVATE+KEY+name+id+base64(0x01 ‖ seed)`),
/// verifier key and the note it signs. Ed25519 is deterministic, so our
/// signer must produce exactly this note.
const GO_SKEY: &str =
    "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
const GO_VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
const GO_TEXT: &str = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n";
const GO_NOTE: &str = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n\n\u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";

#[test]
fn the_c2sp_example_verifies() {
    let (name, key) = parse_vkey(C2SP_VKEY).unwrap();
    assert_eq!(name, "example.com/foo");
    assert_eq!(key_id(&name, &key), 0x530d903a);
    assert_eq!(vkey(&name, &key).unwrap(), C2SP_VKEY);
    assert_eq!(
        open_note(C2SP_NOTE, &name, &key).unwrap(),
        "This is an example message.\n"
    );
    let tampered = C2SP_NOTE.replace("example message", "exemple message");
    assert!(matches!(
        open_note(&tampered, &name, &key),
        Err(NoteError::BadSignature { .. })
    ));
}

#[test]
fn our_signer_reproduces_go_sumdb_note() {
    let material = STANDARD
        .decode(
            GO_SKEY
                .strip_prefix("PRIVATE+KEY+PeterNeumann+c74f20a3+")
                .unwrap(),
        )
        .unwrap();
    assert_eq!(material[0], 0x01);
    let key = SigningKey::from_bytes(&material[1..].try_into().unwrap());
    assert_eq!(vkey("PeterNeumann", &key.verifying_key()).unwrap(), GO_VKEY);
    assert_eq!(sign_note(&key, "PeterNeumann", GO_TEXT).unwrap(), GO_NOTE);
    let (name, vk) = parse_vkey(GO_VKEY).unwrap();
    assert_eq!(open_note(GO_NOTE, &name, &vk).unwrap(), GO_TEXT);
    // Another key's signature is ignored; with none of ours the note is
    // refused.
    let (c2sp_name, c2sp_key) = parse_vkey(C2SP_VKEY).unwrap();
    assert!(matches!(
        open_note(GO_NOTE, &c2sp_name, &c2sp_key),
        Err(NoteError::NotSigned { .. })
    ));
}

fn ledger_key() -> SigningKey {
    SigningKey::from_bytes(&[42u8; 32])
}

const ORIGIN: &str = "nhs.example/phb-ledger/test";

fn checkpoint(size: u64) -> Checkpoint {
    let mut t = MemoryTree::new();
    for i in 0..size {
        t.append(&[i as u8; 32]).unwrap();
    }
    Checkpoint {
        origin: ORIGIN.into(),
        size,
        root: t.root(),
    }
}

#[test]
fn a_signed_checkpoint_verifies() {
    let key = ledger_key();
    for size in [0, 1, 2, 7, 100] {
        let cp = checkpoint(size);
        let note = sign_checkpoint(&key, ORIGIN, &cp).unwrap();
        let lines: Vec<&str> = note.split('\n').collect();
        assert_eq!(lines[0], ORIGIN);
        assert_eq!(lines[1], size.to_string());
        assert_eq!(lines[2], STANDARD.encode(cp.root));
        assert_eq!(lines[3], "");
        assert!(lines[4].starts_with(&format!("\u{2014} {ORIGIN} ")));
        assert_eq!(lines[5], "");
        assert_eq!(lines.len(), 6);
        let got = parse_and_verify(&note, ORIGIN, &key.verifying_key(), ORIGIN).unwrap();
        assert_eq!(got, cp);
    }
    // The size 0 checkpoint carries the empty tree's root.
    assert_eq!(checkpoint(0).root, EMPTY_ROOT);
}

/// The checkpoint example of c2sp.org/tlog-checkpoint: its body reads
/// (its key is not published, so its signature is someone else's).
#[test]
fn the_c2sp_checkpoint_example_reads() {
    let note = "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n\n\u{2014} example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n";
    let body = &note[..note.find("\n\n").unwrap() + 1];
    let cp = Checkpoint::parse_body(body, "example.com/behind-the-sofa").unwrap();
    assert_eq!(cp.size, 20852163);
    assert_eq!(
        STANDARD.encode(cp.root),
        "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I="
    );
    let key = ledger_key().verifying_key();
    assert!(matches!(
        parse_and_verify(
            note,
            "example.com/behind-the-sofa",
            &key,
            "example.com/behind-the-sofa"
        ),
        Err(NoteError::NotSigned { .. })
    ));
}

/// A witness's cosignature (another key) beside ours is ignored.
#[test]
fn other_signatures_are_ignored() {
    let key = ledger_key();
    let witness = SigningKey::from_bytes(&[7u8; 32]);
    let cp = checkpoint(5);
    let ours = sign_checkpoint(&key, ORIGIN, &cp).unwrap();
    let theirs = sign_checkpoint(&witness, "witness.example/w1", &cp).unwrap();
    let their_line = theirs.split("\n\n").nth(1).unwrap();
    let both = format!("{ours}{their_line}");
    let before = format!(
        "{}\n\n{their_line}{}",
        ours.split("\n\n").next().unwrap(),
        ours.split("\n\n").nth(1).unwrap()
    );
    for note in [&both, &before] {
        assert_eq!(
            parse_and_verify(note, ORIGIN, &key.verifying_key(), ORIGIN).unwrap(),
            cp
        );
    }
    // The same name with another key ID is another key: ignored.
    let same_name = sign_checkpoint(&witness, ORIGIN, &cp).unwrap();
    let line = same_name.split("\n\n").nth(1).unwrap();
    let note = format!("{ours}{line}");
    assert_eq!(
        parse_and_verify(&note, ORIGIN, &key.verifying_key(), ORIGIN).unwrap(),
        cp
    );
    // Only the witness's: not signed by us.
    assert!(matches!(
        parse_and_verify(&theirs, ORIGIN, &key.verifying_key(), ORIGIN),
        Err(NoteError::NotSigned { .. })
    ));
}

#[test]
fn strict_format() {
    let key = ledger_key();
    let vk = key.verifying_key();
    let cp = checkpoint(5);
    let good = sign_checkpoint(&key, ORIGIN, &cp).unwrap();
    let body = good.split("\n\n").next().unwrap().to_string() + "\n";
    let sig_line = good.split("\n\n").nth(1).unwrap().to_string();
    let root64 = STANDARD.encode(cp.root);
    // Re-sign an arbitrary body, so the only fault is the body's form.
    let signed = |body: &str| -> String { sign_note(&key, ORIGIN, body).unwrap() };
    let check = |note: &str| parse_and_verify(note, ORIGIN, &vk, ORIGIN);

    let bad_bodies = [
        format!("{ORIGIN}\n5\n{root64}\nextension\n"),
        format!("{ORIGIN}\n5\n"),
        format!("{ORIGIN}\n05\n{root64}\n"),
        format!("{ORIGIN}\n+5\n{root64}\n"),
        format!("{ORIGIN}\n 5\n{root64}\n"),
        format!("{ORIGIN}\n5 \n{root64}\n"),
        format!("{ORIGIN}\n\n{root64}\n"),
        format!("{ORIGIN}\n00\n{}\n", STANDARD.encode(EMPTY_ROOT)),
        format!("{ORIGIN}\n-1\n{root64}\n"),
        format!("{ORIGIN}\n0x5\n{root64}\n"),
        format!("{ORIGIN}\n18446744073709551616\n{root64}\n"),
        format!("{ORIGIN}\n9223372036854775809\n{root64}\n"),
        format!("{ORIGIN}\n5\n{}\n", root64.trim_end_matches('=')),
        format!("{ORIGIN}\n5\n{}\n", STANDARD.encode([1u8; 31])),
        format!("{ORIGIN}\n5\n{}\n", STANDARD.encode([1u8; 33])),
        format!("{ORIGIN}\n5\n{}\n", root64[..42].to_string() + "B="), // non-zero trailing bits
        format!(
            "{ORIGIN}\n5\n{}\n",
            root64.replace('/', "_").replace('+', "-")
        ),
        format!("{ORIGIN}\n5\n {root64}\n"),
        format!("{ORIGIN}\n0\n{root64}\n"), // size 0, not the empty root
        format!("other.example/log\n5\n{root64}\n"),
        format!("{ORIGIN} \n5\n{root64}\n"),
        format!("\n{ORIGIN}\n5\n{root64}\n"),
    ];
    for b in &bad_bodies {
        if b == &format!(
            "{ORIGIN}\n5\n{}\n",
            root64.replace('/', "_").replace('+', "-")
        ) && !root64.contains(['/', '+'])
        {
            continue; // This root has no character that differs in URL-safe base64.
        }
        assert!(check(&signed(b)).is_err(), "accepted body {b:?}");
    }
    assert_eq!(check(&signed(&body)).unwrap(), cp);

    // Damaged notes.
    let bad_notes = [
        body.clone(),                               // no signatures
        format!("{body}\n"),                        // blank line, nothing after
        format!("{body}{sig_line}"),                // no blank line
        format!("{body}\n{}", sig_line.trim_end()), // no final newline
        format!("{body}\n{sig_line}\n"),            // trailing blank line
        format!("{body}\n\n{sig_line}"),            // two blank lines: body gets one
        format!("{body}\n{}", sig_line.replace('\u{2014}', "-")),
        format!("{body}\n{}", sig_line.replacen(' ', "  ", 1)),
        format!(
            "{body}\n{}",
            sig_line.replacen(&format!(" {ORIGIN} "), &format!(" {ORIGIN}  "), 1)
        ),
        format!("{body}\n{}", sig_line.replace('=', "")),
        format!("{body}\n\u{2014} {ORIGIN} AAAA\n"), // 3 bytes: too short
        format!("{body}\n\u{2014} {ORIGIN}\n"),
        format!("{body}\n\u{2014}  x\n"),
        format!("{body}\n{sig_line}junk\n"),
        format!("{body}\r\n{sig_line}"),
        format!("{}\t\n{}", body.trim_end(), &good[body.len()..]),
        good.replace(ORIGIN, "nhs.example/phb-ledger/tesT"),
        good.replace("\n5\n", "\n6\n"),
        format!("{body}\n{}", sig_line.repeat(33)),
        format!("{}{}", "x".repeat(MAX_NOTE_BYTES), good),
    ];
    for n in &bad_notes {
        assert!(check(n).is_err(), "accepted note {n:?}");
    }
    // A known key's signature that fails is refused even beside a good one.
    let mut sig = STANDARD
        .decode(sig_line.trim_end().rsplit(' ').next().unwrap())
        .unwrap();
    sig[10] ^= 1;
    let forged = format!("\u{2014} {ORIGIN} {}\n", STANDARD.encode(&sig));
    assert!(matches!(
        check(&format!("{good}{forged}")),
        Err(NoteError::BadSignature { .. })
    ));
    // Every single-bit change of the note is refused.
    let bytes = good.as_bytes();
    for i in 0..bytes.len() {
        for bit in 0..8 {
            let mut b = bytes.to_vec();
            b[i] ^= 1 << bit;
            if let Ok(s) = std::str::from_utf8(&b) {
                assert!(
                    check(s).is_err(),
                    "bit {bit} of byte {i} changed and accepted"
                );
            }
        }
    }
    // Wrong key, wrong expected origin.
    let other = SigningKey::from_bytes(&[1u8; 32]).verifying_key();
    assert!(parse_and_verify(&good, ORIGIN, &other, ORIGIN).is_err());
    assert!(matches!(
        parse_and_verify(&good, ORIGIN, &vk, "nhs.example/other"),
        Err(NoteError::WrongOrigin { .. })
    ));
}

#[test]
fn what_we_sign_is_checked() {
    let key = ledger_key();
    let mut cp = checkpoint(3);
    for origin in ["", "has space", "has+plus", "tab\there", "new\nline"] {
        cp.origin = origin.into();
        assert!(sign_checkpoint(&key, ORIGIN, &cp).is_err(), "{origin:?}");
    }
    cp.origin = "x".repeat(256);
    assert!(sign_checkpoint(&key, ORIGIN, &cp).is_err());
    cp.origin = ORIGIN.into();
    for name in ["", "a b", "a+b", "a\u{2003}b"] {
        assert!(matches!(
            sign_checkpoint(&key, name, &cp),
            Err(NoteError::BadKeyName(_))
        ));
    }
    cp.size = 0;
    assert_eq!(
        sign_checkpoint(&key, ORIGIN, &cp),
        Err(NoteError::EmptyTreeRoot)
    );
    assert!(sign_note(&key, ORIGIN, "no newline").is_err());
    assert!(sign_note(&key, ORIGIN, "").is_err());
    assert!(sign_note(&key, ORIGIN, "bell\u{7}\n").is_err());
}

#[test]
fn verifier_keys_are_strict() {
    let (name, key) = parse_vkey(GO_VKEY).unwrap();
    assert_eq!(vkey(&name, &key).unwrap(), GO_VKEY);
    let bad = [
        "PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", // wrong ID
        "PeterNeumann+C74F20A3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", // upper-case hex
        "PeterNeumann+c74f20a+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  // short ID
        "PeterNeumann+c74f20a3+Apc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  // short key
        "PeterNeumann+c74f20a3+AhpcMQcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", // other type
        "PeterNeumann+c74f20a3",
        "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW+x",
        "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
    ];
    for v in bad {
        assert!(parse_vkey(v).is_err(), "{v}");
    }
    // Every truncation of the vkey is refused.
    for i in 0..GO_VKEY.len() {
        assert!(parse_vkey(&GO_VKEY[..i]).is_err(), "{i}");
    }
}

#[test]
fn verifier_keys_whose_base64_holds_a_plus_round_trip() {
    // About half of all keys have a '+' in their base64; the key part is
    // everything after the second '+'.
    let mut seen_plus = 0;
    for i in 0u8..64 {
        let key = SigningKey::from_bytes(&[i; 32]).verifying_key();
        let text = vkey(ORIGIN, &key).unwrap();
        seen_plus += usize::from(text.matches('+').count() > 2);
        assert_eq!(
            parse_vkey(&text).unwrap(),
            (ORIGIN.to_string(), key),
            "{text}"
        );
    }
    assert!(seen_plus > 0);
}
