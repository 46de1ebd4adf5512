//! Aligned text tables for people. Ids are cut to their first [`SHORT_ID`] hex
//! digits, enough to tell them apart by eye; `--json` prints them whole.

/// Hex digits of an id shown in a table.
pub const SHORT_ID: usize = 12;

/// The first [`SHORT_ID`] characters of an id's text form (other text as is).
pub fn short(id: impl std::fmt::Display) -> String {
    let text = id.to_string();
    let hex = text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit());
    if hex {
        text[..SHORT_ID].to_owned()
    } else {
        text
    }
}

/// How a column lines up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// Text.
    Left,
    /// Numbers.
    Right,
}

/// A table: a header row and rows of cells, rendered with columns padded to
/// their widest cell and two spaces between them.
#[derive(Debug)]
pub struct Table {
    columns: Vec<(&'static str, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these headers.
    pub fn new(columns: &[(&'static str, Align)]) -> Self {
        Self {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; it must have one cell per column.
    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.columns.len(), "one cell per column");
        self.rows.push(cells);
    }

    /// The table as lines of text, each ending in a newline.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.columns.iter().map(|(h, _)| h.len()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let headers: Vec<String> = self.columns.iter().map(|(h, _)| h.to_string()).collect();
        let mut out = String::new();
        for row in std::iter::once(&headers).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                let pad = widths[i] - cell.chars().count();
                let last = i + 1 == row.len();
                if i > 0 {
                    line.push_str("  ");
                }
                match self.columns[i].1 {
                    Align::Right => line.extend(std::iter::repeat_n(' ', pad).chain(cell.chars())),
                    // No trailing spaces after the last column.
                    Align::Left if last => line.push_str(cell),
                    Align::Left => line.extend(cell.chars().chain(std::iter::repeat_n(' ', pad))),
                }
            }
            out.push_str(&line);
            out.push('\n');
        }
        out
    }

    /// The table, or the line `empty` when it has no row.
    pub fn render_or(&self, empty: &str) -> String {
        if self.rows.is_empty() {
            format!("{empty}\n")
        } else {
            self.render()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_to_the_widest_cell() {
        let mut t = Table::new(&[
            ("ID", Align::Left),
            ("SIZE", Align::Right),
            ("NAME", Align::Left),
        ]);
        t.row(vec!["abc".into(), "5".into(), "maths".into()]);
        t.row(vec!["a".into(), "12345".into(), "é".into()]);
        assert_eq!(
            t.render(),
            "ID    SIZE  NAME\n\
             abc      5  maths\n\
             a    12345  é\n"
        );
    }

    #[test]
    fn only_full_hex_ids_are_shortened() {
        let id = "0123456789abcdef".repeat(4);
        assert_eq!(short(&id), "0123456789ab");
        assert_eq!(short("new-1"), "new-1");
        assert_eq!(short("0123"), "0123");
    }
}
