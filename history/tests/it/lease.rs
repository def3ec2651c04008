//! The maintenance lease on a real PostgreSQL: one holder at a time, and the next one takes
//! it when the holder's session goes.

use fleetward_history::lease::Lease;

use crate::support;

#[tokio::test]
async fn one_writer_holds_the_maintenance_lease_until_its_session_goes() {
    let Some(a) = support::postgres("lease").await else {
        return;
    };
    // A second replica: its own pool on the same database.
    let b = a.clone();
    let mut first = Lease::try_take(&a)
        .await
        .expect("PostgreSQL answers")
        .expect("nobody holds the lease yet");
    assert!(first.held().await);
    assert!(
        Lease::try_take(&b)
            .await
            .expect("PostgreSQL answers")
            .is_none(),
        "a second holder while the first lives"
    );
    drop(first);
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if let Some(mut second) = Lease::try_take(&b).await.expect("PostgreSQL answers") {
            assert!(second.held().await);
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "the lease was not released in 10 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
