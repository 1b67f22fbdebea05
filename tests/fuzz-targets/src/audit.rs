//! Target for exported audit segments: the JSON Lines file an operator hands to
//! `quench audit verify --file`, checked on its own by `store::verify_segment`. Besides the
//! target, the properties a tampered segment keeps are functions here, so the proptests on real
//! chains (`tests/audit_segment.rs`) and the fuzzer assert the same ones.

use quench_runner::store::{AuditEntry, Segment, verify_segment};
use sha2::{Digest, Sha256};

/// A segment file (the whole input). Verifying never panics; a segment that verifies is what
/// its lines say (see [`check_segment`]); and, tampered with, it is refused, or reported as
/// what is left of it: a line removed ([`check_removed`]), two lines swapped (refused), a
/// truncation at each line's end and in its middle ([`check_truncated`]), a byte changed in
/// the middle of each line ([`check_changed`]).
pub fn audit_segment(data: &[u8]) {
    // The CLI reads the file as UTF-8 (`read_to_string`) before it verifies it.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(segment) = verify_segment(text, None) else {
        return;
    };
    check_segment(text, &segment);
    let lines: Vec<&str> = text.lines().collect();
    for index in 0..lines.len() {
        check_removed(text, &segment, index);
    }
    for index in 1..lines.len() {
        let mut swapped = lines.clone();
        swapped.swap(index - 1, index);
        check_reordered(text, &swapped.join("\n"));
    }
    let mut start = 0;
    for line in &lines {
        let end = start + line.len();
        check_truncated(text, &segment, end);
        check_truncated(text, &segment, start + line.len() / 2);
        let middle = start + line.len() / 2;
        if middle < end {
            check_changed(text, &segment, middle, text.as_bytes()[middle] ^ 1);
        }
        // The next line starts after this one's ending (`\n` or `\r\n`).
        start = text[end..]
            .find('\n')
            .map_or(text.len(), |newline| end + newline + 1);
    }
}

/// A verified segment is what its lines say: one entry per line, from the first line's
/// sequence number and `prev` to the last line's hash; it verifies again after the `prev` it
/// reports, and after no other.
pub fn check_segment(text: &str, segment: &Segment) {
    let lines: Vec<&str> = text.lines().collect();
    let (Some(first), Some(last)) = (lines.first(), lines.last()) else {
        panic!("an empty segment verified: {segment:?}");
    };
    let entry: AuditEntry = serde_json::from_str(first).expect("a verified line is an entry");
    assert_eq!(
        (segment.first, &segment.prev),
        (entry.seq, &entry.prev),
        "the segment starts where its first line does"
    );
    assert_eq!(
        segment.last - segment.first + 1,
        lines.len() as u64,
        "one entry per line"
    );
    assert_eq!(
        segment.head,
        line_hash(last),
        "the head is the last line's hash"
    );
    assert_eq!(
        verify_segment(text, Some(&segment.prev)).as_ref(),
        Ok(segment),
        "a segment verifies after the hash it follows"
    );
    let other = if segment.prev == segment.head {
        line_hash(&segment.prev)
    } else {
        segment.head.clone()
    };
    assert!(
        verify_segment(text, Some(&other)).is_err(),
        "a segment verified after {other}, which it does not follow"
    );
}

/// `text` (which verified as `segment`) without its line `index`: without the first line it is
/// the rest of the segment, which no longer follows `segment.prev`; without the last, the
/// segment one entry shorter; without any other, refused.
pub fn check_removed(text: &str, segment: &Segment, index: usize) {
    let mut lines: Vec<&str> = text.lines().collect();
    let count = lines.len();
    lines.remove(index);
    let removed = lines.join("\n");
    let result = verify_segment(&removed, None);
    if count == 1 {
        assert!(result.is_err(), "an empty segment verified: {result:?}");
    } else if index == 0 {
        let rest = result.unwrap_or_else(|problem| {
            panic!("the segment without its first line is refused: {problem}")
        });
        assert_eq!(
            (rest.first, rest.last, &rest.head),
            (segment.first + 1, segment.last, &segment.head),
            "the segment without its first line"
        );
        assert!(
            verify_segment(&removed, Some(&segment.prev)).is_err(),
            "a segment without its first line still follows {}",
            segment.prev
        );
    } else if index == count - 1 {
        assert_eq!(
            result,
            Ok(Segment {
                first: segment.first,
                prev: segment.prev.clone(),
                last: segment.last - 1,
                head: line_hash(lines[index - 1]),
            }),
            "the segment without its last line is one entry shorter"
        );
    } else {
        assert!(
            result.is_err(),
            "a segment without its line {} verified: {result:?}",
            index + 1
        );
    }
}

/// The lines of `text` (which verified) in another order: refused. Sequence numbers go up by
/// one from line to line, so no other order of two or more entries follows.
pub fn check_reordered(text: &str, reordered: &str) {
    let original: Vec<&str> = text.lines().collect();
    let lines: Vec<&str> = reordered.lines().collect();
    if lines == original {
        return;
    }
    let result = verify_segment(reordered, None);
    assert!(result.is_err(), "reordered lines verified: {result:?}");
}

/// `text` (which verified as `segment`) cut after `at` bytes. Cut at a line's end (or only in
/// the whitespace after its entry), it is the shorter segment of the lines it keeps, or refused
/// when it keeps none; cut inside an entry, refused.
pub fn check_truncated(text: &str, segment: &Segment, at: usize) {
    // Cut inside a UTF-8 character: the CLI cannot read the file.
    let Some(kept) = text.get(..at) else {
        return;
    };
    let result = verify_segment(kept, None);
    let whole = kept.matches('\n').count();
    let rest = &kept[kept.rfind('\n').map_or(0, |newline| newline + 1)..];
    let blank = |line: &str| line.trim_end_matches([' ', '\t', '\r']).len();
    let cut_inside = !rest.is_empty() && {
        let line = text.lines().nth(whole).expect("a cut line is a line");
        blank(rest) != blank(line)
    };
    let lines: Vec<&str> = kept.lines().collect();
    match lines.last() {
        Some(last) if !cut_inside => assert_eq!(
            result,
            Ok(Segment {
                first: segment.first,
                prev: segment.prev.clone(),
                last: segment.first + lines.len() as u64 - 1,
                head: line_hash(last),
            }),
            "a segment cut after {at} bytes, at a line's end, is the lines it keeps"
        ),
        _ => assert!(
            result.is_err(),
            "a segment cut after {at} bytes verified: {result:?}"
        ),
    }
}

/// `text` (which verified as `segment`) with its byte `at` changed to `byte`. A change before
/// the last line is refused; in the last line, it is refused or shows as another head (the
/// hash the segment ends with, to compare with a published one).
pub fn check_changed(text: &str, segment: &Segment, at: usize, byte: u8) {
    let mut bytes = text.as_bytes().to_vec();
    assert_ne!(bytes[at], byte, "a change changes the byte");
    bytes[at] = byte;
    // Not UTF-8: the CLI cannot read the file.
    let Ok(changed) = std::str::from_utf8(&bytes) else {
        return;
    };
    let result = verify_segment(changed, None);
    let body = text.strip_suffix('\n').unwrap_or(text);
    let last_line = body.rfind('\n').map_or(0, |newline| newline + 1);
    if at < last_line {
        assert!(
            result.is_err(),
            "byte {at} changed to {byte:#04x}, before the last line, and the segment verified: {result:?}"
        );
    } else if let Ok(verified) = result {
        assert_ne!(
            verified.head, segment.head,
            "byte {at} changed to {byte:#04x} and the segment verified with its old head"
        );
    }
}

/// The hash of an entry as exported: SHA-256 of the line, in hex.
pub fn line_hash(line: &str) -> String {
    hex::encode(Sha256::digest(line.as_bytes()))
}
