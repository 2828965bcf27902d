//! 1,000 probes at once, in process, against healthy, stalled and refused loopback servers
//! (issue 7): how long each kind takes against the probe's budget, and whether open file
//! descriptors, tokio tasks and OS threads come back to where they started.
//!
//! Healthy: the real Dovecot (IMAPS) and aiosmtpd (submission with STARTTLS) of the test suite,
//! probed without a login, as CreateDomainSettings does. Stalled: a listener that accepts and never
//! writes (probed over IMAPS, so the TLS stage waits, and over SMTP, so the greeting waits), and
//! one that never accepts (its accept queue is full, so the connection attempt waits). Refused: a
//! closed port. The probes are spread evenly over these six kinds and all started at once.
//!
//! Settings from the environment (cargo passes its own flags as arguments):
//! `MAILCONNECT_BENCH_PROBES` (default 1000), `MAILCONNECT_BENCH_OUT` (Markdown file; default
//! stdout). Every connection goes to 127.0.0.1.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mailconnect::config::ProbeSettings;
use mailconnect::domain::probe::{
    ProbeContext, ProbeOutcome, ProbeReport, ProbeRequest, ProbeTarget, Security, ServerEndpoint,
};
use mailconnect::probe::Probe;

#[allow(dead_code)]
#[path = "../tests/api/mail_servers.rs"]
mod mail_servers;

#[allow(dead_code)]
#[path = "../tests/api/fault_servers.rs"]
mod fault_servers;

#[path = "../tests/api/resources.rs"]
mod resources;

use fault_servers::{Fault, FaultServer, Unanswered, refused_port};
use mail_servers::{Aiosmtpd, Dovecot, SmtpMode};
use resources::Held;

/// The whole-probe budget, also the stage timeout: a stall in any stage meets the whole budget.
const BUDGET: Duration = Duration::from_secs(5);
/// The goal: every stalled probe ends within its budget + 10 %.
const OVERRUN: f64 = 1.10;
/// How often descriptors, tasks and threads are counted while the probes run.
const SAMPLE_EVERY: Duration = Duration::from_millis(10);
/// How long the counts may take to come back once every probe has returned.
const SETTLE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    DovecotImaps,
    AiosmtpdStarttls,
    SilentImaps,
    SilentSmtp,
    Unanswered,
    Refused,
}

impl Kind {
    const ALL: [Kind; 6] = [
        Kind::DovecotImaps,
        Kind::AiosmtpdStarttls,
        Kind::SilentImaps,
        Kind::SilentSmtp,
        Kind::Unanswered,
        Kind::Refused,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::DovecotImaps => "healthy: Dovecot, IMAPS",
            Kind::AiosmtpdStarttls => "healthy: aiosmtpd, SMTP + STARTTLS",
            Kind::SilentImaps => "stalled: accepts, never writes (IMAPS)",
            Kind::SilentSmtp => "stalled: accepts, never writes (SMTP)",
            Kind::Unanswered => "stalled: never accepts, full backlog (IMAPS)",
            Kind::Refused => "refused: closed port (IMAPS)",
        }
    }

    fn stalls(self) -> bool {
        matches!(
            self,
            Kind::SilentImaps | Kind::SilentSmtp | Kind::Unanswered
        )
    }
}

/// The loopback ports of every kind of server.
struct Servers {
    dovecot_imaps: u16,
    aiosmtpd: u16,
    silent: u16,
    unanswered: u16,
    refused: u16,
}

impl Servers {
    fn ports(&self) -> [u16; 5] {
        [
            self.dovecot_imaps,
            self.aiosmtpd,
            self.silent,
            self.unanswered,
            self.refused,
        ]
    }

    fn request(&self, kind: Kind) -> ProbeRequest {
        let server = |port, security| ServerEndpoint {
            host: "127.0.0.1".to_owned(),
            port,
            security,
        };
        let target = match kind {
            Kind::DovecotImaps => {
                ProbeTarget::Imap(server(self.dovecot_imaps, Security::ImplicitTls))
            }
            Kind::AiosmtpdStarttls => ProbeTarget::Smtp(server(self.aiosmtpd, Security::StartTls)),
            Kind::SilentImaps => ProbeTarget::Imap(server(self.silent, Security::ImplicitTls)),
            Kind::SilentSmtp => ProbeTarget::Smtp(server(self.silent, Security::StartTls)),
            Kind::Unanswered => ProbeTarget::Imap(server(self.unanswered, Security::ImplicitTls)),
            Kind::Refused => ProbeTarget::Imap(server(self.refused, Security::ImplicitTls)),
        };
        ProbeRequest {
            target,
            // The test servers' certificates are self-signed.
            allow_insecure_certificate: true,
            credentials: None,
            field_prefix: String::new(),
        }
    }
}

/// One probe's result: how long the caller waited and what the report said.
struct Finished {
    kind: Kind,
    took: Duration,
    /// The outcome and, when it failed, the stage it failed in.
    verdict: String,
}

fn verdict(report: &ProbeReport) -> String {
    let failed = report
        .stages
        .iter()
        .find(|stage| !stage.outcome.is_success() && stage.outcome != ProbeOutcome::Skipped);
    match failed {
        Some(stage) => format!("{:?} in {}", report.outcome, stage.name),
        None => format!("{:?}", report.outcome),
    }
}

/// What the run measured.
struct Run {
    probes: usize,
    wall: Duration,
    finished: Vec<Finished>,
    before: Held,
    peak: Held,
    returned: Held,
    settled: Held,
    settle_wait: Duration,
}

async fn run(servers: &Servers, probes: usize) -> Run {
    let ports = servers.ports();
    let settings = ProbeSettings {
        probe_timeout: BUDGET,
        probe_stage_timeout: BUDGET,
        probe_max_concurrent: u32::try_from(probes).unwrap(),
        probe_rate_per_minute: u32::MAX,
        ..mail_servers::probe_settings(&ports)
    };
    let probe = Arc::new(Probe::from_settings(&settings));
    let before = Held::now();
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = tokio::spawn({
        let sampling = sampling.clone();
        async move {
            let mut peak = Held::now();
            while sampling.load(Ordering::Relaxed) {
                let now = Held::now();
                peak = Held {
                    fds: peak.fds.max(now.fds),
                    tasks: peak.tasks.max(now.tasks),
                    threads: peak.threads.max(now.threads),
                };
                tokio::time::sleep(SAMPLE_EVERY).await;
            }
            peak
        }
    });
    let started = Instant::now();
    let running: Vec<_> = (0..probes)
        .map(|i| {
            let kind = Kind::ALL[i % Kind::ALL.len()];
            let request = servers.request(kind);
            let probe = probe.clone();
            tokio::spawn(async move {
                let start = Instant::now();
                let verdict = match probe.probe(request, ProbeContext::default()).await {
                    Ok(report) => verdict(&report),
                    Err(refused) => format!("not run: {refused:?}"),
                };
                Finished {
                    kind,
                    took: start.elapsed(),
                    verdict,
                }
            })
        })
        .collect();
    let mut finished = Vec::with_capacity(probes);
    for task in running {
        finished.push(task.await.expect("a probe task panicked"));
    }
    let wall = started.elapsed();
    sampling.store(false, Ordering::Relaxed);
    let peak = sampler.await.unwrap();
    let returned = Held::now();
    let settling = Instant::now();
    let settled = Held::back_to(before, SETTLE).await;
    Run {
        probes,
        wall,
        finished,
        before,
        peak,
        returned,
        settled,
        settle_wait: settling.elapsed(),
    }
}

fn ms(duration: Duration) -> String {
    format!("{:.1}", duration.as_secs_f64() * 1e3)
}

fn render(run: &Run) -> String {
    let mut out = String::new();
    let budget_ms = ms(BUDGET);
    writeln!(
        out,
        "### {} concurrent probes (in process, `benches/probes.rs`)\n",
        run.probes
    )
    .unwrap();
    writeln!(
        out,
        "- {} probes started at once on a tokio runtime of {} worker threads, concurrency bound {}; budget {} s per probe (whole probe and each stage); a probe's time runs from the call into the probe to its report",
        run.probes,
        tokio::runtime::Handle::current().metrics().num_workers(),
        run.probes,
        BUDGET.as_secs()
    )
    .unwrap();
    writeln!(
        out,
        "- all {} returned after {} ms\n",
        run.probes,
        ms(run.wall)
    )
    .unwrap();
    writeln!(
        out,
        "| kind | probes | outcome (stage) | min ms | p50 ms | p99 ms | max ms | budget ms | over budget + 10 % |"
    )
    .unwrap();
    writeln!(out, "|---|---:|---|---:|---:|---:|---:|---:|---:|").unwrap();
    for kind in Kind::ALL {
        let mut took: Vec<Duration> = run
            .finished
            .iter()
            .filter(|f| f.kind == kind)
            .map(|f| f.took)
            .collect();
        if took.is_empty() {
            continue;
        }
        took.sort();
        let mut verdicts = BTreeMap::<&str, usize>::new();
        for f in run.finished.iter().filter(|f| f.kind == kind) {
            *verdicts.entry(&f.verdict).or_default() += 1;
        }
        let verdicts: Vec<String> = verdicts.iter().map(|(v, n)| format!("{n} {v}")).collect();
        let at = |q: f64| took[((took.len() - 1) as f64 * q).round() as usize];
        let over = took
            .iter()
            .filter(|t| t.as_secs_f64() > BUDGET.as_secs_f64() * OVERRUN)
            .count();
        writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {budget_ms} | {over}{} |",
            kind.name(),
            took.len(),
            verdicts.join(", "),
            ms(took[0]),
            ms(at(0.50)),
            ms(at(0.99)),
            ms(took[took.len() - 1]),
            if kind.stalls() { " (goal 0)" } else { "" },
        )
        .unwrap();
    }
    writeln!(
        out,
        "\n| held by the process | before | peak (sampled every {} ms) | when all had returned | {} ms later |",
        SAMPLE_EVERY.as_millis(),
        run.settle_wait.as_millis()
    )
    .unwrap();
    writeln!(out, "|---|---:|---:|---:|---:|").unwrap();
    let moments = [run.before, run.peak, run.returned, run.settled];
    for (name, [before, peak, returned, settled]) in [
        (
            "open file descriptors (`/proc/self/fd`)",
            moments.map(|held| held.fds),
        ),
        (
            "tokio alive tasks (`num_alive_tasks`)",
            moments.map(|held| held.tasks),
        ),
        (
            "OS threads (`/proc/self/task`)",
            moments.map(|held| held.threads),
        ),
    ] {
        writeln!(
            out,
            "| {name} | {before} | {peak} | {returned} | {settled} |"
        )
        .unwrap();
    }
    writeln!(
        out,
        "\nThe descriptors include both ends of the connections to the in-process stalled server; its tasks run on a runtime of their own and are not counted; the peak counts the sampling task."
    )
    .unwrap();
    out
}

fn main() {
    let probes: usize = std::env::var("MAILCONNECT_BENCH_PROBES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000);
    let out = std::env::var_os("MAILCONNECT_BENCH_OUT").map(PathBuf::from);
    let (dovecot, smtp) = (Dovecot::start(), Aiosmtpd::start(SmtpMode::StartTls));
    // The stalled servers get a runtime of their own: the probes' runtime then counts only the
    // probes' tasks.
    let fault_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let silent = fault_runtime.block_on(FaultServer::start(Fault::Silent));
    let unanswered = fault_runtime.block_on(Unanswered::start());
    let servers = Servers {
        dovecot_imaps: dovecot.imaps_port,
        aiosmtpd: smtp.port,
        silent: silent.port,
        unanswered: unanswered.port,
        refused: refused_port(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let table = runtime.block_on(async {
        let run = run(&servers, probes).await;
        render(&run)
    });
    match out {
        Some(path) => std::fs::write(path, table).unwrap(),
        None => println!("{table}"),
    }
}
