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
        let offset = offset.min(self.source.len());
        let line = self
            .starts
            .partition_point(|start| *start <= offset)
            .saturating_sub(1);
        let line_start = self.starts[line];
        let column = self.source[line_start..offset].chars().count();
        (line + 1, column + 1)
    }
}
