//! Line starts of a source: (line, column) markers to byte offsets and back. Shared by the YAML
//! reader and the diagnostic renderer (below both, so neither depends on the other).

use marked_yaml::Marker;

/// Line starts of a source, to turn (line, column) markers into byte offsets and back.
#[derive(Debug)]
pub(crate) struct LineIndex {
    starts: Vec<usize>,
    source: String,
}

impl LineIndex {
    pub(crate) fn new(source: &str) -> LineIndex {
        let starts = std::iter::once(0)
            .chain(source.match_indices('\n').map(|(index, _)| index + 1))
            .collect();
        LineIndex {
            starts,
            source: source.to_owned(),
        }
    }

    /// Byte offset of a marker (1-based line and column, columns in characters).
    pub(crate) fn offset(&self, marker: Option<&Marker>) -> usize {
        let Some(marker) = marker else { return 0 };
        let line = marker
            .line()
            .saturating_sub(1)
            .min(self.starts.len().saturating_sub(1));
        let line_start = self.starts.get(line).copied().unwrap_or(0);
        let line_text = &self.source[line_start..];
        let column = marker.column().saturating_sub(1);
        line_start
            + line_text
                .char_indices()
                .nth(column)
                .map_or(line_text.len(), |(index, _)| index)
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub(crate) fn line_column(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.source.len());
        // A span may end inside a character (a byte past its start): count that character.
        while !self.source.is_char_boundary(offset) {
            offset -= 1;
        }
        let line = self
            .starts
            .partition_point(|start| *start <= offset)
            .saturating_sub(1);
        let line_start = self.starts[line];
        let column = self.source[line_start..offset].chars().count();
        (line + 1, column + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A source that once took the service down: a YAML error right before a four-byte
    /// character (schemathesis, through `POST /api/v1/validate`).
    #[test]
    fn a_syntax_error_before_a_wide_character_is_located() {
        let source = "{\n\u{6886e}B#\u{82}\u{ccdcc}";
        let compiled = crate::playbook::compile(source);
        assert!(!compiled.diagnostics.is_empty());
        let located = crate::playbook::Report {
            file: "<request>",
            source,
            diagnostics: &compiled.diagnostics,
        }
        .located();
        assert_eq!((located[0].line, located[0].column), (2, 1));
        let span = &compiled.diagnostics[0].span;
        assert!(
            source.is_char_boundary(span.start) && source.is_char_boundary(span.end),
            "{span:?}"
        );
    }

    proptest::proptest! {
        /// Any offset, in or past any text, has a line and column: never a panic.
        #[test]
        fn every_offset_has_a_line_and_column(source in "\\PC{0,40}", offset in 0usize..200) {
            let (line, column) = LineIndex::new(&source).line_column(offset);
            proptest::prop_assert!(line >= 1 && column >= 1);
        }
    }
}
