//! Reading allowlist files: one entry a line, as published lists are written (bare addresses,
//! CIDRs, with or without a list marker such as `- `). Every bad line is reported with its number;
//! the good ones are kept, so the caller decides whether to publish them.

use std::collections::BTreeSet;
use std::fmt;

use ipnet::IpNet;

use super::parse_entry;

/// A line that is not a usable entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineProblem {
    /// 1-based line number.
    pub line: usize,
    /// The line as written.
    pub text: String,
    pub reason: String,
}

impl fmt::Display for LineProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {:?}: {}", self.line, self.text, self.reason)
    }
}

/// What a file holds.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// The good entries, duplicates merged.
    pub ranges: BTreeSet<IpNet>,
    pub problems: Vec<LineProblem>,
}

/// Markers of list items in documents: `- 1.2.3.4`, `* 1.2.3.4`, `• 1.2.3.4`.
const LIST_MARKERS: [char; 3] = ['-', '*', '•'];

/// Reads a file's text. Blank lines and `#` comments are skipped; a list marker with nothing
/// after it is an empty entry, reported like any other bad line.
pub fn import_lines(text: &str) -> ImportReport {
    let mut report = ImportReport::default();
    for (number, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (entry, marked) = strip_marker(line);
        let parsed = if marked && entry.is_empty() {
            Err("empty entry: a list marker with no address after it".to_owned())
        } else {
            parse_entry(entry)
        };
        match parsed {
            Ok(range) => {
                report.ranges.insert(range);
            }
            Err(reason) => report.problems.push(LineProblem {
                line: number + 1,
                text: raw.to_owned(),
                reason,
            }),
        }
    }
    report
}

fn strip_marker(line: &str) -> (&str, bool) {
    for marker in LIST_MARKERS {
        if let Some(rest) = line.strip_prefix(marker)
            && (rest.is_empty() || rest.starts_with(char::is_whitespace))
        {
            return (rest.trim(), true);
        }
    }
    (line, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_blank_lines_and_comments() {
        let report = import_lines(
            "# egress\n- 141.193.184.0/27\n\n* 143.244.82.12\r\n-\n143.244.82.13\n- 10.0.0.1\n-nope\n",
        );
        let ranges: Vec<String> = report.ranges.iter().map(ToString::to_string).collect();
        assert_eq!(
            ranges,
            ["141.193.184.0/27", "143.244.82.12/32", "143.244.82.13/32"]
        );
        let lines: Vec<usize> = report.problems.iter().map(|problem| problem.line).collect();
        assert_eq!(lines, [5, 7, 8]);
        assert!(report.problems[0].reason.starts_with("empty entry"));
        assert_eq!(
            report.problems[0].to_string(),
            "line 5: \"-\": empty entry: a list marker with no address after it"
        );
    }
}
