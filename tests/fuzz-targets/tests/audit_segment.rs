//! Property tests of `store::verify_segment` on segments of a real chain: entries committed
//! through a store (packed into records by its committer) and exported as
//! `GET /api/v1/audit/export` writes them. The properties are the fuzz target's
//! (`quench_fuzz_targets::audit_segment` and its `check_*`); here they meet real segments
//! cut anywhere in the chain, and arbitrary tampering.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use proptest::prelude::*;
use quench_fuzz_targets::{
    audit_segment, check_changed, check_removed, check_reordered, check_segment, check_truncated,
    line_hash,
};
use quench_runner::store::{AuditDraft, Batch, Segment, Store, parse_stored, verify_segment};

/// The genesis hash: what entry #1 follows.
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// A stored entry: its hash and its body, as exported (one line).
struct Stored {
    hash: String,
    line: String,
}

/// A chain of 100 entries committed in batches of varied sizes (so records of up to 32 entries
/// and the boundaries between them), with the kinds of fields real entries carry.
static CHAIN: LazyLock<Vec<Stored>> = LazyLock::new(|| {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let store = Store::temporary().expect("a temporary store");
    let at: DateTime<Utc> = "2026-11-26T12:00:00Z".parse().expect("a time");
    let mut written = 0;
    for size in [1, 7, 40, 2, 33, 17] {
        let mut batch = Batch::new();
        for _ in 0..size {
            written += 1;
            let mut draft = AuditDraft::new(
                at + chrono::Duration::seconds(written),
                "step_intent",
                serde_json::json!({
                    "n": written,
                    "text": "a \"quoted\" text, ünïcödé and a tab\t",
                    "nested": {"list": [1, 2.5, null, true]},
                }),
            );
            draft.run_id = Some(format!("0195f0c2-0000-7000-8000-{written:012}"));
            draft.playbook = Some("leaked-openai-key".to_owned());
            draft.step = Some("revoke".to_owned());
            if written % 5 == 0 {
                draft.actor =
                    Some(serde_json::json!({"via": "slack", "id": "T1/U2", "name": "ann"}));
                draft.allowed = Some(written % 10 == 0);
            }
            batch.audit(draft);
        }
        runtime
            .block_on(store.commit(batch))
            .expect("the batch commits");
    }
    assert_eq!(
        store.verify_audit().expect("the chain reads").first_bad,
        None
    );
    let hashes: Vec<String> = store
        .audit_entries()
        .map(|item| {
            let (_, stored) = item.expect("an entry reads");
            parse_stored(&stored).expect("an entry parses").0
        })
        .collect();
    store
        .audit_export(u64::MAX)
        .zip(hashes)
        .map(|(item, hash)| {
            let (_, body) = item.expect("an entry exports");
            let line = String::from_utf8(body).expect("an entry is UTF-8");
            Stored { hash, line }
        })
        .collect()
});

/// Entries `first..=last` (numbered from 1) as an export file: one line each, `\n`-terminated.
fn export(first: usize, last: usize) -> (String, Segment) {
    let entries = &CHAIN[first - 1..last];
    let mut text = String::new();
    for entry in entries {
        text.push_str(&entry.line);
        text.push('\n');
    }
    let prev = if first == 1 {
        GENESIS.to_owned()
    } else {
        CHAIN[first - 2].hash.clone()
    };
    let segment = Segment {
        first: first as u64,
        prev,
        last: last as u64,
        head: entries.last().expect("a segment has entries").hash.clone(),
    };
    (text, segment)
}

/// A segment of the chain: its first and last entry numbers.
fn range() -> impl Strategy<Value = (usize, usize)> {
    (1..=CHAIN.len()).prop_flat_map(|first| (Just(first), first..=CHAIN.len().min(first + 40)))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        audit_segment(&data);
        if let Ok(text) = std::str::from_utf8(&data) {
            let _ = verify_segment(text, Some(GENESIS));
        }
    }

    #[test]
    fn arbitrary_lines_never_panic(lines in proptest::collection::vec("[ -~\t\r]{0,80}", 0..8)) {
        audit_segment(lines.join("\n").as_bytes());
    }

    #[test]
    fn a_segment_of_a_real_chain_verifies((first, last) in range()) {
        let (text, segment) = export(first, last);
        prop_assert_eq!(verify_segment(&text, None), Ok(segment.clone()));
        prop_assert_eq!(verify_segment(&text, Some(&segment.prev)), Ok(segment.clone()));
        check_segment(&text, &segment);
        // And every line-level property of the fuzz target: removals, swaps, cuts, changes.
        audit_segment(text.as_bytes());
    }

    #[test]
    fn a_changed_byte_is_refused_or_shows_as_another_head(
        (first, last) in range(),
        place in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let (text, segment) = export(first, last);
        let at = place.index(text.len());
        prop_assume!(text.as_bytes()[at] != byte);
        check_changed(&text, &segment, at, byte);
    }

    #[test]
    fn a_removed_line_is_refused_unless_it_was_the_first_or_last(
        (first, last) in range(),
        place in any::<prop::sample::Index>(),
    ) {
        let (text, segment) = export(first, last);
        check_removed(&text, &segment, place.index(last - first + 1));
    }

    #[test]
    fn reordered_lines_are_refused(
        (first, last) in (1..CHAIN.len()).prop_flat_map(|first| {
            (Just(first), first + 1..=CHAIN.len().min(first + 40))
        }),
        seed in any::<u64>(),
    ) {
        let (text, _) = export(first, last);
        let mut lines: Vec<&str> = text.lines().collect();
        // A permutation from the seed: Fisher-Yates with a small linear congruential generator.
        let mut state = seed;
        for index in (1..lines.len()).rev() {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let other = usize::try_from(state >> 33).expect("31 bits fit") % (index + 1);
            lines.swap(index, other);
        }
        check_reordered(&text, &lines.join("\n"));
    }

    #[test]
    fn a_truncated_segment_is_refused_or_the_lines_it_keeps(
        (first, last) in range(),
        place in any::<prop::sample::Index>(),
    ) {
        let (text, segment) = export(first, last);
        check_truncated(&text, &segment, place.index(text.len() + 1));
    }
}

/// The cut at each line's end, exactly: the segment of the lines kept, with their last hash.
#[test]
fn a_segment_cut_at_a_line_end_is_the_shorter_segment() {
    let (text, segment) = export(3, 12);
    let mut end = 0;
    for (kept, line) in text.lines().enumerate() {
        end += line.len();
        let shorter = verify_segment(&text[..end], Some(&segment.prev)).expect("a prefix verifies");
        assert_eq!(shorter.last, 3 + kept as u64);
        assert_eq!(shorter.head, CHAIN[2 + kept].hash);
        end += 1;
    }
    assert!(
        verify_segment("", None).is_err(),
        "an empty file is no segment"
    );
}

/// What a forger could try: a segment that starts the chain after anything but genesis, an
/// entry #0 before entry #1, sequence numbers that wrap around.
#[test]
fn a_segment_refuses_what_no_chain_holds() {
    let (text, _) = export(1, 3);
    let forged = text.replacen(GENESIS, &"1".repeat(64), 1);
    let problem = verify_segment(&forged, None).expect_err("entry #1 after another hash");
    assert!(problem.contains("does not start the chain"), "{problem}");

    let zero = format!(
        r#"{{"seq":0,"prev":"{}","at":"2026-11-26T12:00:00Z","kind":"x","detail":{{}}}}"#,
        "1".repeat(64)
    );
    let one = CHAIN[0].line.replacen(GENESIS, &line_hash(&zero), 1);
    let problem = verify_segment(&format!("{zero}\n{one}\n"), None).expect_err("entry #0");
    assert!(problem.contains("entry #0"), "{problem}");

    let max = format!(
        r#"{{"seq":{},"prev":"{}","at":"2026-11-26T12:00:00Z","kind":"x","detail":{{}}}}"#,
        u64::MAX,
        "1".repeat(64)
    );
    let after = format!(
        r#"{{"seq":1,"prev":"{}","at":"2026-11-26T12:00:00Z","kind":"x","detail":{{}}}}"#,
        line_hash(&max)
    );
    assert!(verify_segment(&format!("{max}\n{after}\n"), None).is_err());
    assert!(
        verify_segment(&max, None).is_ok(),
        "the last sequence number is one"
    );
}
