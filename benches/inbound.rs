//! The inbound router's parser in process: attributing a 20 KiB message the team forwarded by
//! hand (Gmail style, the original in the body) and one a Google Group rewrote, per message.
//! `cargo bench --bench inbound`.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mailconnect::domain::inbound::{AttributionRule, Context, analyze};

#[path = "support/inbound_message.rs"]
mod inbound_message;
use inbound_message::forwarded_message;

fn group_message() -> Vec<u8> {
    format!(
        "From: 'Ana Cliente' via Support <support@acme.example>\r\nX-Original-From: Ana Cliente <ana@customer.example>\r\nReply-To: ana@customer.example\r\nList-Id: <support.acme.example>\r\nPrecedence: list\r\nSubject: Help\r\nMessage-ID: <g-1@customer.example>\r\n\r\n{}",
        "Where is my order?\r\n".repeat(1000)
    )
    .into_bytes()
}

fn parser(c: &mut Criterion) {
    let users = vec!["ada@acme.example".to_owned()];
    let context = Context {
        team_address: "support@acme.example",
        user_addresses: &users,
        own_id_prefixes: &["notification-", "verification-"],
        own_domain: "mailconnect.invalid",
        own_address: "noreply@mailconnect.invalid",
    };
    let mut group = c.benchmark_group("route_inbound_parser");
    for (name, raw, rule) in [
        (
            "inline_forward_20k",
            forwarded_message(),
            AttributionRule::InlineForward,
        ),
        (
            "list_rewrite_20k",
            group_message(),
            AttributionRule::ListRewrite,
        ),
    ] {
        assert_eq!(analyze(&raw, &context).unwrap().rule, rule, "{name}");
        group.throughput(Throughput::Elements(1));
        group.bench_function(name, |b| {
            b.iter(|| analyze(black_box(&raw), &context).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, parser);
criterion_main!(benches);
