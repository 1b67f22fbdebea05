//! "Did you mean" suggestions: the closest candidate by edit distance, when it is close enough to
//! be a plausible typo rather than a different word.

/// The candidate closest to `word`, if it is similar enough to be a plausible typo of it
/// (Jaro-Winkler, which favours a shared prefix, or a single edit for short words).
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let word = word.to_lowercase();
    candidates
        .into_iter()
        .filter(|candidate| *candidate != word)
        .map(|candidate| {
            let lower = candidate.to_lowercase();
            let similarity = strsim::jaro_winkler(&word, &lower);
            let one_edit = strsim::damerau_levenshtein(&word, &lower) <= 1;
            (
                if one_edit {
                    similarity.max(0.9)
                } else {
                    similarity
                },
                candidate,
            )
        })
        .filter(|(similarity, _)| *similarity >= 0.82)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, candidate)| candidate)
}

/// `did you mean `x`?` when a close candidate exists.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    closest(word, candidates).map(|close| format!("did you mean `{close}`?"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_typos_not_strangers() {
        assert_eq!(
            closest("projectid", ["project_id", "service_account_id", "id"]),
            Some("project_id")
        );
        assert_eq!(
            closest("retires", ["retry", "timeout", "foreach"]),
            Some("retry")
        );
        assert_eq!(closest("banana", ["retry", "timeout"]), None);
    }
}
