//! The egress allowlist: which public IP ranges each data center sends from, per protocol, and
//! how the published set changes from version to version.

mod cidr;
pub mod export;
pub mod import;
pub mod index;

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;

pub use cidr::parse_entry;

use super::FieldViolation;
use super::directory::DataCenterId;

/// A class of egress traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Smtp,
    Imap,
}

impl Protocol {
    pub const ALL: [Protocol; 2] = [Protocol::Smtp, Protocol::Imap];

    /// The stable name stored in the database and used in files (`smtp`).
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Smtp => "smtp",
            Protocol::Imap => "imap",
        }
    }

    pub fn from_db(value: &str) -> Option<Protocol> {
        Protocol::ALL.into_iter().find(|p| p.as_str() == value)
    }
}

/// One range as readers see it: a CIDR with the protocols that use it in one data center.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedRange {
    pub cidr: IpNet,
    pub protocols: BTreeSet<Protocol>,
    pub data_center: DataCenterId,
    /// UTC microseconds: when traffic starts (or started) leaving from this range.
    pub effective_time: i64,
    /// Announced but not used yet.
    pub upcoming: bool,
}

/// One stored row: a range of one protocol in one data center, as the database keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeRecord {
    pub data_center: DataCenterId,
    pub protocol: Protocol,
    pub cidr: IpNet,
    /// UTC microseconds from which traffic uses the range.
    pub effective_time: i64,
    /// Set when a publication removed the range with advance notice: listed until then.
    pub retire_time: Option<i64>,
}

impl RangeRecord {
    /// Whether readers still see the range at `now`.
    pub fn listed_at(&self, now: i64) -> bool {
        self.retire_time.is_none_or(|retire| retire > now)
    }
}

/// Turns stored rows into what readers see at `now`: one entry per CIDR (and per upcoming
/// state, when a CIDR is current for one protocol and upcoming for another), ordered by address,
/// IPv4 first, retired rows left out.
pub fn published_ranges<'a>(
    records: impl IntoIterator<Item = &'a RangeRecord>,
    now: i64,
) -> Vec<PublishedRange> {
    let mut grouped: BTreeMap<(IpNet, bool, DataCenterId), PublishedRange> = BTreeMap::new();
    for record in records.into_iter().filter(|record| record.listed_at(now)) {
        let upcoming = record.effective_time > now;
        let entry = grouped
            .entry((record.cidr, upcoming, record.data_center.clone()))
            .or_insert_with(|| PublishedRange {
                cidr: record.cidr,
                protocols: BTreeSet::new(),
                data_center: record.data_center.clone(),
                effective_time: record.effective_time,
                upcoming,
            });
        entry.protocols.insert(record.protocol);
        entry.effective_time = entry.effective_time.min(record.effective_time);
    }
    grouped.into_values().collect()
}

/// Parses a whole publication, naming every bad entry by its index (`ranges[3]`). Duplicates
/// (also spelled differently: `1.2.3.4` and `1.2.3.4/32`) are merged.
pub fn parse_ranges(
    field: &str,
    entries: &[String],
) -> Result<BTreeSet<IpNet>, Vec<FieldViolation>> {
    let mut ranges = BTreeSet::new();
    let mut violations = Vec::new();
    for (index, entry) in entries.iter().enumerate() {
        match parse_entry(entry) {
            Ok(range) => {
                ranges.insert(range);
            }
            Err(reason) => {
                violations.push(FieldViolation::new(format!("{field}[{index}]"), reason))
            }
        }
    }
    if violations.is_empty() {
        Ok(ranges)
    } else {
        Err(violations)
    }
}

/// What a publication changes: CIDRs added and removed, each sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diff {
    pub added: Vec<IpNet>,
    pub removed: Vec<IpNet>,
}

impl Diff {
    pub fn between(current: &BTreeSet<IpNet>, next: &BTreeSet<IpNet>) -> Self {
        Self {
            added: next.difference(current).copied().collect(),
            removed: current.difference(next).copied().collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

/// One published version of a data center's list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowlistChange {
    pub data_center: DataCenterId,
    /// Counts from 1 per data center.
    pub version: i64,
    pub protocol: Protocol,
    /// UTC microseconds of the publication.
    pub publish_time: i64,
    /// UTC microseconds from which the change applies.
    pub effective_time: i64,
    pub diff: Diff,
}

/// The opaque etag of a data center's list at a version.
pub fn etag(data_center: &DataCenterId, version: i64) -> String {
    format!("{}.v{version}", data_center.as_str())
}

/// The version an etag names, if it is an etag of this data center's list.
pub fn etag_version(data_center: &DataCenterId, etag: &str) -> Option<i64> {
    etag.strip_prefix(data_center.as_str())?
        .strip_prefix(".v")?
        .parse()
        .ok()
        .filter(|version: &i64| *version >= 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dc(id: &str) -> DataCenterId {
        DataCenterId::parse("data_center", id).unwrap()
    }

    fn nets(list: &[&str]) -> BTreeSet<IpNet> {
        list.iter().map(|text| text.parse().unwrap()).collect()
    }

    #[test]
    fn every_bad_entry_is_named_and_duplicates_merge() {
        let entries: Vec<String> = ["1.1.1.1", "-", "1.1.1.1/32", "10.0.0.0/8", "8.8.8.9/24"]
            .map(String::from)
            .to_vec();
        let fields: Vec<String> = parse_ranges("ranges", &entries)
            .unwrap_err()
            .into_iter()
            .map(|violation| violation.field)
            .collect();
        assert_eq!(fields, ["ranges[1]", "ranges[3]", "ranges[4]"]);
        let good = parse_ranges("ranges", &["1.1.1.1".into(), "1.1.1.1/32".into()]).unwrap();
        assert_eq!(good, nets(&["1.1.1.1/32"]));
    }

    #[test]
    fn diff_is_sorted_both_ways() {
        let diff = Diff::between(
            &nets(&["1.1.1.1/32", "8.8.8.0/24"]),
            &nets(&["9.9.9.9/32", "1.1.1.1/32", "2600::/16"]),
        );
        assert_eq!(
            diff.added,
            Vec::from_iter(nets(&["9.9.9.9/32", "2600::/16"]))
        );
        assert_eq!(diff.removed, Vec::from_iter(nets(&["8.8.8.0/24"])));
    }

    #[test]
    fn etags_round_trip_per_data_center() {
        let na1 = dc("na1");
        assert_eq!(etag_version(&na1, &etag(&na1, 7)), Some(7));
        assert_eq!(etag_version(&dc("eu1"), &etag(&na1, 7)), None);
        assert_eq!(etag_version(&na1, "garbage"), None);
    }

    #[test]
    fn readers_see_one_entry_per_cidr_with_upcoming_and_retired_rows_handled() {
        let record = |protocol, cidr: &str, effective_time, retire_time| RangeRecord {
            data_center: dc("na1"),
            protocol,
            cidr: cidr.parse().unwrap(),
            effective_time,
            retire_time,
        };
        let now = 100;
        let ranges = published_ranges(
            &[
                record(Protocol::Imap, "8.8.8.0/24", 20, None),
                record(Protocol::Smtp, "8.8.8.0/24", 10, None),
                record(Protocol::Smtp, "9.9.9.9/32", 200, None),
                record(Protocol::Smtp, "1.1.1.1/32", 10, Some(150)),
                record(Protocol::Imap, "1.0.0.1/32", 10, Some(50)),
            ],
            now,
        );
        let seen: Vec<(String, Vec<Protocol>, i64, bool)> = ranges
            .into_iter()
            .map(|r| {
                (
                    r.cidr.to_string(),
                    r.protocols.into_iter().collect(),
                    r.effective_time,
                    r.upcoming,
                )
            })
            .collect();
        assert_eq!(
            seen,
            [
                ("1.1.1.1/32".into(), vec![Protocol::Smtp], 10, false),
                (
                    "8.8.8.0/24".into(),
                    vec![Protocol::Smtp, Protocol::Imap],
                    10,
                    false
                ),
                ("9.9.9.9/32".into(), vec![Protocol::Smtp], 200, true),
            ]
        );
    }
}
