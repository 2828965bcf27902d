//! CheckAddress in process: the allowlist index with 100,000 ranges (goal: at most 200 ns per
//! lookup). `cargo bench --bench check_address`; scripts/bench copies the result to BENCHMARKS.md.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use mailconnect::domain::allowlist::index::RangeIndex;
use mailconnect::domain::allowlist::{Protocol, RangeRecord, published_ranges};
use mailconnect::domain::directory::DataCenterId;

#[path = "support/ranges.rs"]
mod ranges;

fn index() -> RangeIndex {
    let data_center = DataCenterId::parse("data_center", "eu1").unwrap();
    RangeIndex::new(
        (0..ranges::EXTRA_RANGES)
            .map(|i| RangeRecord {
                data_center: data_center.clone(),
                protocol: if i % 2 == 0 {
                    Protocol::Smtp
                } else {
                    Protocol::Imap
                },
                cidr: ranges::range(i),
                effective_time: 0,
                retire_time: None,
            })
            .collect(),
    )
}

fn check_address(c: &mut Criterion) {
    let index = index();
    let addresses = ranges::probe_addresses(1024);
    let mut group = c.benchmark_group("check_address_100k_ranges");
    // One lookup per iteration, cycling through hits and misses of both families.
    group.bench_function("index_lookup", |b| {
        let mut next = 0;
        b.iter(|| {
            next = (next + 1) % addresses.len();
            black_box(index.containing(black_box(addresses[next])).len())
        })
    });
    // What the service does with the index: the lookup plus turning matches into the answer.
    group.bench_function("lookup_and_answer", |b| {
        let mut next = 0;
        b.iter(|| {
            next = (next + 1) % addresses.len();
            let matched = index.containing(black_box(addresses[next]));
            black_box(published_ranges(matched, 1).len())
        })
    });
    group.finish();
}

criterion_group!(benches, check_address);
criterion_main!(benches);
