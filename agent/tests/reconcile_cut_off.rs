//! `disconnect.stopOnNodeAfter`, over the fake runtime: a board cut off from the controller
//! that long stops the container itself (others keep running); when contact is back it starts
//! it again only once a list read after the reconnect still assigns it here, without counting
//! a restart, and removes it if that list does not.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{container, runtime_state, wait_phase, Harness};
use texu_agent::daemon::contact::Contact;
use texu_agent::daemon::Desired;
use texu_agent::runtime::{FakeCall, Phase};
use texu_api::{ContainerPhase, RoleSpec};

fn role(stop_on_node_after: Option<&str>) -> RoleSpec {
    let mut role = RoleSpec::with_image("template:busybox");
    role.command = vec!["/bin/sleep".into(), "1000".into()];
    role.disconnect.stop_on_node_after = stop_on_node_after.map(Into::into);
    role
}

/// Heartbeats that get through every 20 ms while `on`, as the heartbeat loop would report.
fn pump(contact: Arc<Contact>) -> Arc<AtomicBool> {
    let on = Arc::new(AtomicBool::new(true));
    let flag = on.clone();
    tokio::spawn(async move {
        // Bounded: 30 s at most, longer than the test.
        for _ in 0..1500 {
            if flag.load(Ordering::SeqCst) {
                contact.heartbeat_ok(Instant::now());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    on
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cut_off_board_stops_what_asks_for_it_and_resumes_it_only_on_a_fresh_list() {
    let data = tempfile::tempdir().unwrap();
    // Cut off after 100 ms of silence; `app-0` stops 300 ms into a cut-off, `app-1` never.
    let contact = Arc::new(Contact::new(Duration::from_millis(100)));
    let heartbeats = pump(contact.clone());
    let h = Harness::start(data.path(), contact.clone());
    let guarded = container("app-0", 0, role(Some("300ms")));
    let plain = container("app-1", 1, role(None));
    h.send(Desired::Snapshot(vec![guarded.clone(), plain.clone()], 0))
        .await;
    wait_phase(&h.rt, "app-0", Phase::Running).await;
    let plain_pid = wait_phase(&h.rt, "app-1", Phase::Running).await;

    // Cut off: after 100 ms + 300 ms the agent stops app-0 and says why.
    heartbeats.store(false, Ordering::SeqCst);
    let cut = Instant::now();
    wait_phase(&h.rt, "app-0", Phase::Stopped).await;
    assert!(
        cut.elapsed() >= Duration::from_millis(400),
        "stopped {:?} into the cut-off, before stopOnNodeAfter",
        cut.elapsed()
    );
    common::eventually_async("app-0 reported CutOff", || async {
        h.status("app-0").await.is_some_and(|r| {
            r.status.phase == ContainerPhase::Stopped
                && r.status.reason.as_deref() == Some("CutOff")
        })
    })
    .await;
    assert_eq!(
        runtime_state(&h.rt, "app-1").await,
        Some((Phase::Running, plain_pid)),
        "a container without stopOnNodeAfter keeps running"
    );

    // Contact is back, but the list the board holds is from before: app-0 stays stopped.
    h.rt.clear_calls();
    heartbeats.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(700)).await; // over two reconcile ticks
    assert_eq!(contact.epoch(), 1);
    assert_eq!(
        runtime_state(&h.rt, "app-0").await.map(|s| s.0),
        Some(Phase::Stopped),
        "started again on a list from before the reconnect"
    );
    // A list of the new epoch still assigns it here: it starts again, not counted as a
    // restart, and not recreated.
    h.send(Desired::Snapshot(vec![guarded.clone(), plain.clone()], 1))
        .await;
    wait_phase(&h.rt, "app-0", Phase::Running).await;
    assert!(h.rt.calls().contains(&FakeCall::Start("app-0".into())));
    assert!(!h.rt.calls().contains(&FakeCall::Create("app-0".into())));
    common::eventually_async("app-0 reported running again", || async {
        h.status("app-0")
            .await
            // With no readiness probe it goes on from Running to Ready at once: either is
            // "running again"; what matters is that the CutOff reason is gone.
            .is_some_and(|r| {
                matches!(
                    r.status.phase,
                    ContainerPhase::Running | ContainerPhase::Ready
                ) && r.status.reason.is_none()
            })
    })
    .await;
    assert_eq!(h.status("app-0").await.unwrap().status.restarts, 0);

    // Cut off again; this time the fresh list has moved it away: the board removes it.
    heartbeats.store(false, Ordering::SeqCst);
    wait_phase(&h.rt, "app-0", Phase::Stopped).await;
    heartbeats.store(true, Ordering::SeqCst);
    common::eventually("the second reconnect", || contact.epoch() == 2).await;
    h.send(Desired::Snapshot(vec![plain.clone()], 2)).await;
    common::eventually("app-0 removed", || h.rt.spec("app-0").is_none()).await;
    assert_eq!(
        runtime_state(&h.rt, "app-1").await,
        Some((Phase::Running, plain_pid))
    );
    h.stop().await;
}
