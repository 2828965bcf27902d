use std::sync::atomic::{AtomicUsize, Ordering};

use std::sync::Arc;

use crate::domain::allowlist::{AllowlistChange, Protocol, RangeRecord};
use crate::domain::directory::DataCenterId;
use crate::service::StoreError;
use crate::service::allowlist::*;
use crate::service::clock::SystemClock;
use crate::storage::{Database, DatabaseUrl};

/// The database, counting how often every range is loaded.
struct CountingStore {
    database: Database,
    full_loads: AtomicUsize,
}

impl AllowlistStore for CountingStore {
    async fn account_data_center(
        &self,
        account_id: i64,
    ) -> Result<Option<DataCenterId>, StoreError> {
        self.database.account_data_center(account_id).await
    }
    async fn version(&self, data_center: &DataCenterId) -> Result<i64, StoreError> {
        self.database.version(data_center).await
    }
    async fn list(&self, data_center: &DataCenterId) -> Result<Arc<StoredList>, StoreError> {
        self.database.list(data_center).await
    }
    async fn generation(&self) -> Result<i64, StoreError> {
        self.database.generation().await
    }
    async fn all_records(&self) -> Result<(i64, Vec<RangeRecord>), StoreError> {
        self.full_loads.fetch_add(1, Ordering::SeqCst);
        self.database.all_records().await
    }
    async fn changes_after(
        &self,
        data_center: &DataCenterId,
        after: i64,
        limit: usize,
    ) -> Result<Vec<AllowlistChange>, StoreError> {
        self.database.changes_after(data_center, after, limit).await
    }
    async fn has_history(
        &self,
        data_center: &DataCenterId,
        protocol: Protocol,
    ) -> Result<bool, StoreError> {
        self.database.has_history(data_center, protocol).await
    }
    async fn publish(&self, publication: Publication) -> Result<PublishOutcome, StoreError> {
        self.database.publish(publication).await
    }
}

/// Concurrent first CheckAddress calls build the index once (each build loads every range:
/// 64 at once took a server to 772 MiB with 100,000 ranges).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_lookups_build_the_index_once() {
    let database = Database::new(DatabaseUrl::SqliteMemory, 1).unwrap();
    database.migrate().await.unwrap();
    publish_initial_lists(&database, &SystemClock)
        .await
        .unwrap();
    let service = Arc::new(AllowlistService::new(
        CountingStore {
            database,
            full_loads: AtomicUsize::new(0),
        },
        DataCenterId::parse("dc", "na1").unwrap(),
        Arc::new(SystemClock),
    ));
    let lookups: Vec<_> = (0..16)
        .map(|_| {
            let service = Arc::clone(&service);
            tokio::spawn(async move { service.check_address("143.244.82.13").await })
        })
        .collect();
    for lookup in lookups {
        assert!(!lookup.await.unwrap().unwrap().is_empty());
    }
    assert_eq!(service.store().full_loads.load(Ordering::SeqCst), 1);
}
