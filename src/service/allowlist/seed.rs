//! The initial lists: the egress ranges of the product documents (seed 003), kept verbatim in
//! versioned files under `data/allowlist/` and published through the same importer as
//! `mailconnect allowlist import`, the first time the database is migrated.

use super::{AllowlistStore, Publication, PublishOutcome};
use crate::domain::allowlist::Protocol;
use crate::domain::allowlist::import::import_lines;
use crate::domain::directory::DataCenterId;
use crate::service::StoreError;
use crate::service::clock::Clock;

/// One embedded list file.
pub struct InitialList {
    pub data_center: &'static str,
    pub protocol: Protocol,
    pub path: &'static str,
    pub text: &'static str,
}

pub const INITIAL_LISTS: &[InitialList] = &[
    InitialList {
        data_center: "na1",
        protocol: Protocol::Smtp,
        path: "data/allowlist/na1-smtp.txt",
        text: include_str!("../../../data/allowlist/na1-smtp.txt"),
    },
    InitialList {
        data_center: "na1",
        protocol: Protocol::Imap,
        path: "data/allowlist/na1-imap.txt",
        text: include_str!("../../../data/allowlist/na1-imap.txt"),
    },
];

/// How often a publication that lost a race with another replica is retried.
const ATTEMPTS: usize = 5;

/// Publishes each initial list whose data center and protocol never had a publication, so that
/// an operator's later changes (even an empty list) are never overwritten. Bad lines are logged
/// with their number and skipped. Returns how many lists were published. Watchers learn of them
/// by reading the database.
pub async fn publish_initial_lists<S: AllowlistStore>(
    store: &S,
    clock: &dyn Clock,
) -> Result<usize, StoreError> {
    let mut published = 0;
    for list in INITIAL_LISTS {
        let data_center = DataCenterId::parse("data_center", list.data_center)
            .map_err(|error| StoreError::Internal(error.to_string()))?;
        if store.has_history(&data_center, list.protocol).await? {
            continue;
        }
        let report = import_lines(list.text);
        for problem in &report.problems {
            tracing::warn!(file = list.path, %problem, "skipped a line of an initial allowlist");
        }
        // Another replica may publish first: then the history check decides again.
        for attempt in 0..ATTEMPTS {
            if attempt > 0 && store.has_history(&data_center, list.protocol).await? {
                break;
            }
            let current = store.version(&data_center).await?;
            let now = clock.now_micros();
            let outcome = store
                .publish(Publication {
                    data_center: data_center.clone(),
                    protocol: list.protocol,
                    ranges: report.ranges.clone(),
                    expected_version: Some(current),
                    effective_time: now,
                    publish_time: now,
                    validate_only: false,
                })
                .await?;
            match outcome {
                PublishOutcome::Stale { .. } => continue,
                PublishOutcome::Published(_) => {
                    published += 1;
                    break;
                }
                PublishOutcome::NotPublished { .. } => break,
            }
        }
    }
    Ok(published)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The article's lists have one empty entry ("-") on line 3 and twelve good ones each.
    #[test]
    fn initial_lists_report_the_empty_entry_and_keep_the_rest() {
        for list in INITIAL_LISTS {
            let report = import_lines(list.text);
            let lines: Vec<(usize, &str)> = report
                .problems
                .iter()
                .map(|problem| (problem.line, problem.text.as_str()))
                .collect();
            assert_eq!(lines, [(3, "-")], "{}", list.path);
            assert!(report.problems[0].reason.starts_with("empty entry"));
            assert_eq!(report.ranges.len(), 12, "{}", list.path);
        }
    }
}
