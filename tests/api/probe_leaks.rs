//! Many probes at once at servers that stall or refuse give back every file descriptor and task
//! they took (issue 7; `benches/probes.rs` measures the same at 1,000 probes, with timings).

use std::sync::Arc;
use std::time::Duration;

use mailconnect::config::ProbeSettings;
use mailconnect::domain::probe::{ProbeContext, ProbeOutcome, Security};
use mailconnect::probe::Probe;

use crate::fault_servers::{Fault, FaultServer, Unanswered, refused_port};
use crate::mail_servers::probe_settings;
use crate::probe::{failed_stage, imap, smtp};
use crate::resources::Held;

const PROBES: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_and_refused_probes_give_back_their_descriptors_and_tasks() {
    let silent = FaultServer::start(Fault::Silent).await;
    let unanswered = Unanswered::start().await;
    let refused = refused_port();
    let settings = ProbeSettings {
        probe_timeout: Duration::from_secs(1),
        probe_stage_timeout: Duration::from_secs(1),
        probe_max_concurrent: PROBES as u32,
        ..probe_settings(&[silent.port, unanswered.port, refused])
    };
    let probe = Arc::new(Probe::from_settings(&settings));
    let before = Held::now();
    let running: Vec<_> = (0..PROBES)
        .map(|i| {
            // Each kind of stall stops a different stage; a closed port refuses the connection.
            let (request, stage, outcome) = match i % 4 {
                0 => (
                    imap(silent.port, Security::ImplicitTls, true, None),
                    "tls",
                    ProbeOutcome::TimedOut,
                ),
                1 => (
                    smtp(silent.port, Security::StartTls, None),
                    "greeting",
                    ProbeOutcome::TimedOut,
                ),
                2 => (
                    imap(unanswered.port, Security::ImplicitTls, true, None),
                    "connect",
                    ProbeOutcome::TimedOut,
                ),
                _ => (
                    smtp(refused, Security::StartTls, None),
                    "connect",
                    ProbeOutcome::Failed,
                ),
            };
            let probe = probe.clone();
            tokio::spawn(async move {
                let report = probe.probe(request, ProbeContext::default()).await;
                (stage, outcome, report.expect("the probe is admitted"))
            })
        })
        .collect();
    for task in running {
        let (stage, outcome, report) = task.await.unwrap();
        assert_eq!(report.outcome, outcome, "{report:#?}");
        assert_eq!(failed_stage(&report).name, stage, "{report:#?}");
    }
    // The silent server's side of each connection closes once it reads the end of the stream.
    let after = Held::back_to(before, Duration::from_secs(30)).await;
    assert_eq!(
        (after.fds, after.tasks),
        (before.fds, before.tasks),
        "before {before:?}, after {after:?}"
    );
}
