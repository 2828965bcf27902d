//! Random and mutated protobuf payloads sent to every `mailconnect.v1` method over gRPC: whatever
//! arrives, the answer is a status the caller can act on (never INTERNAL or UNKNOWN, which would
//! mean a bug or a panic), the server keeps answering Health, and bytes that are not a message of
//! the method's type are INVALID_ARGUMENT with reason MALFORMED_MESSAGE.
//!
//! 1,000 payloads per backend in the normal suite, 10,000 with `MAILCONNECT_TEST_LONG=1`. The
//! generator is seeded (printed on failure; `MAILCONNECT_FUZZ_SEED` replays it).

use futures_util::StreamExt as _;
use mailconnect::domain::principal::Role;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_types::StatusExt as _;

use crate::backend_tests;
use crate::harness::{Backend, TestApp, long_tests, spawn_app, user_token};
use crate::raw_grpc::{Method, all_descriptor_sets, call, served_methods};
use crate::role_matrix::{World, seed, table};

/// Calls in flight at once.
const CONCURRENCY: usize = 16;

fn payload_count() -> usize {
    if long_tests() { 10_000 } else { 1_000 }
}

/// The `mailconnect.v1` methods the server serves (health and reflection are tonic's own).
async fn service_methods(app: &TestApp) -> Vec<Method> {
    served_methods(&app.channel, &all_descriptor_sets())
        .await
        .into_iter()
        .filter(|method| method.path.starts_with("/mailconnect.v1."))
        .collect()
}

/// Appends `value` as a protobuf varint.
fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// A field with a random number, wire type and content, well-formed or not.
fn random_field(rng: &mut StdRng, out: &mut Vec<u8>, depth: u32) {
    let number = rng.random_range(1..=40u64);
    let wire_type = rng.random_range(0..=7u64);
    varint(out, (number << 3) | wire_type);
    match wire_type {
        0 => varint(out, rng.random()),
        1 => out.extend_from_slice(&rng.random::<u64>().to_le_bytes()),
        2 => {
            let mut inner = Vec::new();
            if depth < 3 && rng.random_bool(0.5) {
                for _ in 0..rng.random_range(0..4) {
                    random_field(rng, &mut inner, depth + 1);
                }
            } else {
                inner = (0..rng.random_range(0..40)).map(|_| rng.random()).collect();
            }
            varint(out, inner.len() as u64);
            out.extend_from_slice(&inner);
        }
        5 => out.extend_from_slice(&rng.random::<u32>().to_le_bytes()),
        // Groups (3, 4) and the unused types 6 and 7: prost refuses most of them.
        _ => {}
    }
}

/// One payload: random fields, random bytes, or a mutation of a valid request.
fn payload(rng: &mut StdRng, valid: &[u8]) -> Vec<u8> {
    let mut bytes = valid.to_vec();
    match rng.random_range(0..9) {
        0 => {
            bytes.clear();
            for _ in 0..rng.random_range(0..8) {
                random_field(rng, &mut bytes, 0);
            }
        }
        1 => bytes = (0..rng.random_range(0..64)).map(|_| rng.random()).collect(),
        2 if !bytes.is_empty() => {
            let bit = rng.random_range(0..bytes.len() * 8);
            bytes[bit / 8] ^= 1 << (bit % 8);
        }
        3 if !bytes.is_empty() => bytes.truncate(rng.random_range(0..bytes.len())),
        4 => {
            let at = rng.random_range(0..=bytes.len());
            let noise: Vec<u8> = (0..rng.random_range(1..8)).map(|_| rng.random()).collect();
            bytes.splice(at..at, noise);
        }
        5 => random_field(rng, &mut bytes, 0),
        // A length-delimited field that announces far more than follows.
        6 => {
            varint(&mut bytes, (rng.random_range(1..=10u64) << 3) | 2);
            varint(&mut bytes, rng.random_range(1u64 << 20..1 << 40));
            bytes.extend_from_slice(b"short");
        }
        // An overlong varint.
        7 => bytes.extend_from_slice(&[
            0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
        ]),
        // The valid message twice: protobuf merges it (the last scalar wins).
        _ => bytes.extend_from_slice(valid),
    }
    bytes
}

async fn random_payloads_never_break_the_server(backend: Backend) {
    let app = spawn_app(backend).await;
    let world: World = seed(&app).await;
    let methods = service_methods(&app).await;
    let rows = table();
    let seed_value: u64 = std::env::var("MAILCONNECT_FUZZ_SEED")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(rand::random);
    let mut rng = StdRng::seed_from_u64(seed_value);
    // Half the calls as the account's super admin, half as the platform: every method is
    // reached past its role check by one of them.
    let tokens = [user_token(1, 10, &[Role::SuperAdmin]), app.platform_token()];
    let mut cases = Vec::new();
    for index in 0..payload_count() {
        let method = methods[index % methods.len()].clone();
        let valid = rows
            .iter()
            .find(|row| row.method == method.path)
            .map(|row| (row.request)(&world))
            .unwrap_or_default();
        let token = tokens[rng.random_range(0..tokens.len())].clone();
        cases.push((method, token, payload(&mut rng, &valid)));
    }
    let channel = app.channel.clone();
    let outcomes: Vec<_> = futures_util::stream::iter(cases)
        .map(|(method, token, body)| {
            let channel = channel.clone();
            async move {
                let outcome = call(&channel, &method, Some(&token), body.clone()).await;
                (method.path, body, outcome)
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let mut codes = std::collections::BTreeMap::<String, usize>::new();
    let mut broken = Vec::new();
    for (path, body, outcome) in &outcomes {
        let code = outcome
            .as_ref()
            .err()
            .map_or(Code::Ok, |status| status.code());
        *codes.entry(format!("{code:?}")).or_default() += 1;
        if matches!(code, Code::Internal | Code::Unknown | Code::DataLoss) {
            broken.push(format!("{path} {body:02x?}: {outcome:?}"));
        }
    }
    assert!(
        broken.is_empty(),
        "seed {seed_value}: {} of {} payloads broke the server:\n{}",
        broken.len(),
        outcomes.len(),
        broken.join("\n")
    );
    assert_eq!(
        app.health("").await.expect("health answers"),
        ServingStatus::Serving,
        "seed {seed_value}"
    );
    println!(
        "seed {seed_value}: {} payloads over {} methods: {codes:?}",
        outcomes.len(),
        methods.len()
    );
}

async fn undecodable_requests_are_invalid_argument(backend: Backend) {
    let app = spawn_app(backend).await;
    let token = user_token(1, 10, &[Role::SuperAdmin]);
    // Field 1 as a group end without a start, then a truncated varint: no message type accepts it.
    let garbage = vec![0x0c, 0xff];
    for method in service_methods(&app).await {
        let status = call(&app.channel, &method, Some(&token), garbage.clone())
            .await
            .expect_err(&method.path);
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{}: {status:?}",
            method.path
        );
        assert_eq!(
            status.get_details_error_info().map(|info| info.reason),
            Some("MALFORMED_MESSAGE".to_owned()),
            "{}",
            method.path
        );
    }
}

backend_tests!(
    random_payloads_never_break_the_server,
    undecodable_requests_are_invalid_argument,
);
