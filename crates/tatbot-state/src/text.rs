//! Plain-text rendering shared by the CLI and the MCP server's text resources.

/// Renders rows under headers in left-aligned columns separated by two spaces.
///
/// A row may be shorter than the headers; its last cell then runs on without padding and does
/// not widen its column, which is how a row carries an error message in place of its figures.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|header| header.chars().count()).collect();
    for row in rows {
        // The last cell of a row is never padded, so it does not count towards the width.
        for (cell_idx, cell) in row.iter().enumerate().take(row.len().saturating_sub(1)) {
            if let Some(width) = widths.get_mut(cell_idx) {
                *width = (*width).max(cell.chars().count());
            }
        }
    }
    let header_row: Vec<String> = headers.iter().map(|header| (*header).to_owned()).collect();
    let mut text = String::new();
    for row in std::iter::once(&header_row).chain(rows) {
        let mut line = String::new();
        for (cell_idx, cell) in row.iter().enumerate() {
            if cell_idx + 1 == row.len() {
                line.push_str(cell);
            } else {
                let width = widths.get(cell_idx).copied().unwrap_or(0);
                line.push_str(&format!("{cell:<width$}  "));
            }
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}
