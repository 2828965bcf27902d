//! Rendering a data center's allowlist as files for firewalls and mail servers.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::{Duration, UNIX_EPOCH};

use ipnet::IpNet;
use serde::Serialize;

use super::{Protocol, PublishedRange};
use crate::domain::directory::DataCenterId;

/// File formats of ExportAllowlist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    Plain,
    Csv,
    Json,
    Nginx,
    Iptables,
    Nftables,
    Postfix,
}

/// What is rendered: the ranges of one data center at one version.
#[derive(Debug, Clone)]
pub struct AllowlistSnapshot {
    pub data_center: DataCenterId,
    pub version: i64,
    /// The etag of `version`.
    pub etag: String,
    /// UTC microseconds of the current version's publication; `None` if never published.
    pub update_time: Option<i64>,
    /// The protocols asked for.
    pub protocols: BTreeSet<Protocol>,
    pub ranges: Vec<PublishedRange>,
}

/// A rendered file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub content: String,
    pub content_type: &'static str,
    pub file_name: String,
}

const TEXT: &str = "text/plain; charset=utf-8";

/// RFC 3339 UTC, to the second.
pub fn rfc3339(micros: i64) -> String {
    let time = UNIX_EPOCH + Duration::from_micros(u64::try_from(micros).unwrap_or(0));
    humantime::format_rfc3339_seconds(time).to_string()
}

/// Merges adjacent and overlapping ranges (ipnet's aggregation) among ranges that share their
/// protocols and upcoming state, so that every merged line is still true; each merged range
/// takes the earliest effective time of what it covers.
pub fn aggregate(ranges: &[PublishedRange]) -> Vec<PublishedRange> {
    let mut groups: BTreeMap<(Vec<Protocol>, bool), Vec<&PublishedRange>> = BTreeMap::new();
    for range in ranges {
        let key = (range.protocols.iter().copied().collect(), range.upcoming);
        groups.entry(key).or_default().push(range);
    }
    let mut merged = Vec::new();
    for members in groups.into_values() {
        let networks: Vec<IpNet> = members.iter().map(|range| range.cidr).collect();
        for cidr in IpNet::aggregate(&networks) {
            let covered = members.iter().filter(|range| cidr.contains(&range.cidr));
            let first = members[0];
            merged.push(PublishedRange {
                cidr,
                effective_time: covered
                    .map(|range| range.effective_time)
                    .min()
                    .unwrap_or(first.effective_time),
                ..first.clone()
            });
        }
    }
    merged.sort_by_key(|range| (range.cidr, range.upcoming));
    merged
}

pub fn render(snapshot: &AllowlistSnapshot, format: ExportFormat, aggregated: bool) -> Rendered {
    let ranges = if aggregated {
        aggregate(&snapshot.ranges)
    } else {
        snapshot.ranges.clone()
    };
    let (content, content_type, extension) = match format {
        ExportFormat::Plain => (plain(&ranges), TEXT, "txt"),
        ExportFormat::Csv => (csv(&ranges), "text/csv; charset=utf-8", "csv"),
        ExportFormat::Json => (json(snapshot, &ranges), "application/json", "json"),
        ExportFormat::Nginx => (nginx(snapshot, &ranges), TEXT, "conf"),
        ExportFormat::Iptables => (iptables(snapshot, &ranges), TEXT, "rules"),
        ExportFormat::Nftables => (nftables(snapshot, &ranges), TEXT, "nft"),
        ExportFormat::Postfix => (postfix(snapshot, &ranges), TEXT, "cidr"),
    };
    Rendered {
        content,
        content_type,
        file_name: format!(
            "mailconnect-allowlist-{}-v{}.{extension}",
            snapshot.data_center.as_str(),
            snapshot.version
        ),
    }
}

/// Each CIDR once (a CIDR current for one protocol and upcoming for another is current), for
/// formats that list addresses only. `ranges` are sorted by CIDR, current before upcoming.
fn addresses(ranges: &[PublishedRange]) -> Vec<&PublishedRange> {
    let mut seen = BTreeSet::new();
    ranges
        .iter()
        .filter(|range| seen.insert(range.cidr))
        .collect()
}

fn comment_header(snapshot: &AllowlistSnapshot) -> String {
    let protocols: Vec<&str> = snapshot.protocols.iter().map(|p| p.as_str()).collect();
    format!(
        "# mailconnect egress allowlist: data center {}, version {}, protocols {}.\n",
        snapshot.data_center.as_str(),
        snapshot.version,
        protocols.join(", ")
    )
}

fn upcoming_note(range: &PublishedRange) -> String {
    format!("upcoming: traffic starts {}", rfc3339(range.effective_time))
}

fn plain(ranges: &[PublishedRange]) -> String {
    addresses(ranges)
        .iter()
        .map(|range| format!("{}\n", range.cidr))
        .collect()
}

fn csv(ranges: &[PublishedRange]) -> String {
    let mut out = String::from("cidr,protocols,data_center,effective_time,upcoming\n");
    for range in ranges {
        let protocols: Vec<&str> = range.protocols.iter().map(|p| p.as_str()).collect();
        let _ = writeln!(
            out,
            "{},{},{},{},{}",
            range.cidr,
            protocols.join(";"),
            range.data_center.as_str(),
            rfc3339(range.effective_time),
            range.upcoming
        );
    }
    out
}

/// The shape of AWS's ip-ranges.json: a sync token, a creation date and one prefix entry per
/// range and protocol ("service"), with the data center as "region".
#[derive(Serialize)]
struct JsonDocument<'a> {
    #[serde(rename = "syncToken")]
    sync_token: String,
    #[serde(rename = "createDate")]
    create_date: String,
    data_center: &'a str,
    version: i64,
    prefixes: Vec<JsonPrefix<'a>>,
    ipv6_prefixes: Vec<JsonPrefix<'a>>,
}

#[derive(Serialize)]
struct JsonPrefix<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    ip_prefix: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ipv6_prefix: Option<String>,
    region: &'a str,
    service: String,
    effective_time: String,
    upcoming: bool,
}

fn json(snapshot: &AllowlistSnapshot, ranges: &[PublishedRange]) -> String {
    let mut document = JsonDocument {
        sync_token: snapshot.version.to_string(),
        // AWS's own format: `YYYY-MM-DD-hh-mm-ss`.
        create_date: snapshot
            .update_time
            .map(|time| rfc3339(time).trim_end_matches('Z').replace(['T', ':'], "-"))
            .unwrap_or_default(),
        data_center: snapshot.data_center.as_str(),
        version: snapshot.version,
        prefixes: Vec::new(),
        ipv6_prefixes: Vec::new(),
    };
    for range in ranges {
        for protocol in &range.protocols {
            let v6 = matches!(range.cidr, IpNet::V6(_));
            let prefix = JsonPrefix {
                ip_prefix: (!v6).then(|| range.cidr.to_string()),
                ipv6_prefix: v6.then(|| range.cidr.to_string()),
                region: range.data_center.as_str(),
                service: protocol.as_str().to_uppercase(),
                effective_time: rfc3339(range.effective_time),
                upcoming: range.upcoming,
            };
            if v6 {
                document.ipv6_prefixes.push(prefix);
            } else {
                document.prefixes.push(prefix);
            }
        }
    }
    let mut out = serde_json::to_string_pretty(&document).expect("the document always serialises");
    out.push('\n');
    out
}

fn nginx(snapshot: &AllowlistSnapshot, ranges: &[PublishedRange]) -> String {
    let mut out = comment_header(snapshot);
    out.push_str("# Include in an http, server or stream block, then add `deny all;` after it.\n");
    for range in addresses(ranges) {
        let _ = write!(out, "allow {};", range.cidr);
        if range.upcoming {
            let _ = write!(out, " # {}", upcoming_note(range));
        }
        out.push('\n');
    }
    out
}

fn iptables(snapshot: &AllowlistSnapshot, ranges: &[PublishedRange]) -> String {
    let mut out = comment_header(snapshot);
    out.push_str(
        "# Load with `iptables-restore --noflush`, then jump to MAILCONNECT from your rules.\n",
    );
    out.push_str("*filter\n:MAILCONNECT - [0:0]\n");
    let (v4, v6): (Vec<_>, Vec<_>) = addresses(ranges)
        .into_iter()
        .partition(|range| matches!(range.cidr, IpNet::V4(_)));
    for range in v4 {
        if range.upcoming {
            let _ = writeln!(out, "# {}", upcoming_note(range));
        }
        let _ = writeln!(out, "-A MAILCONNECT -s {} -j ACCEPT", range.cidr);
    }
    if !v6.is_empty() {
        out.push_str("# IPv6 ranges, for ip6tables-restore:\n");
        for range in v6 {
            let _ = writeln!(out, "# -A MAILCONNECT -s {} -j ACCEPT", range.cidr);
        }
    }
    out.push_str("COMMIT\n");
    out
}

fn nftables(snapshot: &AllowlistSnapshot, ranges: &[PublishedRange]) -> String {
    let mut out = comment_header(snapshot);
    out.push_str("# Load with `nft -f`, then match `ip saddr @mailconnect_v4` (and `ip6 saddr @mailconnect_v6`).\n");
    out.push_str("table inet mailconnect {\n");
    let (v4, v6): (Vec<_>, Vec<_>) = addresses(ranges)
        .into_iter()
        .partition(|range| matches!(range.cidr, IpNet::V4(_)));
    nft_set(&mut out, "mailconnect_v4", "ipv4_addr", &v4);
    if !v6.is_empty() {
        nft_set(&mut out, "mailconnect_v6", "ipv6_addr", &v6);
    }
    out.push_str("}\n");
    out
}

fn nft_set(out: &mut String, name: &str, kind: &str, ranges: &[&PublishedRange]) {
    let _ = writeln!(
        out,
        "\tset {name} {{\n\t\ttype {kind}\n\t\tflags interval\n\t\tauto-merge"
    );
    if !ranges.is_empty() {
        let elements: Vec<String> = ranges
            .iter()
            .map(|range| format!("\t\t\t{}", range.cidr))
            .collect();
        let _ = writeln!(out, "\t\telements = {{\n{}\n\t\t}}", elements.join(",\n"));
    }
    out.push_str("\t}\n");
}

fn postfix(snapshot: &AllowlistSnapshot, ranges: &[PublishedRange]) -> String {
    let mut out = comment_header(snapshot);
    out.push_str("# A cidr: table, e.g. `mynetworks = cidr:/etc/postfix/mailconnect.cidr` or\n");
    out.push_str("# `check_client_access cidr:/etc/postfix/mailconnect.cidr`.\n");
    for range in addresses(ranges) {
        if range.upcoming {
            let _ = writeln!(out, "# {}", upcoming_note(range));
        }
        let _ = writeln!(out, "{} OK", range.cidr);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(cidr: &str, protocols: &[Protocol], upcoming: bool) -> PublishedRange {
        PublishedRange {
            cidr: cidr.parse().unwrap(),
            protocols: protocols.iter().copied().collect(),
            data_center: DataCenterId::parse("dc", "na1").unwrap(),
            effective_time: if upcoming {
                4_070_908_800_000_000
            } else {
                1_700_000_000_000_000
            },
            upcoming,
        }
    }

    #[test]
    fn aggregation_merges_only_alike_ranges() {
        let smtp = [Protocol::Smtp];
        let ranges = [
            range("143.244.82.12/32", &smtp, false),
            range("143.244.82.13/32", &smtp, false),
            range("143.244.82.14/31", &smtp, false),
            range("143.244.82.8/30", &[Protocol::Imap], false),
            range("143.244.82.16/32", &smtp, true),
        ];
        let merged: Vec<String> = aggregate(&ranges)
            .iter()
            .map(|r| r.cidr.to_string())
            .collect();
        assert_eq!(
            merged,
            ["143.244.82.8/30", "143.244.82.12/30", "143.244.82.16/32"]
        );
    }

    #[test]
    fn times_are_rfc3339_seconds() {
        assert_eq!(rfc3339(4_070_908_800_000_000), "2099-01-01T00:00:00Z");
    }
}
