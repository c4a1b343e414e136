//! The fleet layer against real etcd (see `testing.rs`): places, leases, halts, notify,
//! canaries and failover. Every test is bounded by [`bounded`]; waits are watches or polls
//! with a deadline, and "still waiting" is checked as "not done within a window".

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::places::MaxParallel;
use super::testing::Cluster;
use super::*;

const TTL: u64 = 2;

fn options(cluster: &Cluster, fleet: &str, host: &str) -> FleetOptions {
    let mut client = ClientOptions::new(cluster.endpoints());
    client.request_timeout = Duration::from_secs(1);
    client.retry_budget = Duration::from_secs(5);
    FleetOptions {
        client,
        prefix: "/repo-deploy".into(),
        fleet: fleet.into(),
        host: host.into(),
        lease_secs: TTL,
    }
}

fn settings(max_parallel: &str, canary: u32) -> RolloutSettings {
    RolloutSettings {
        max_parallel: max_parallel.parse().expect("max-parallel"),
        canary,
        bake: 0,
        on_halt: "stay".into(),
    }
}

fn status(host: &str, phase: &str) -> HostStatus {
    HostStatus {
        host: host.into(),
        version: Some("v1".into()),
        phase: phase.into(),
        last_check: None,
        last_result: Some("ok".into()),
    }
}

/// Run a test body with a deadline, so a hang fails instead of blocking the suite.
async fn bounded<F: std::future::Future<Output = ()>>(secs: u64, body: F) {
    tokio::time::timeout(Duration::from_secs(secs), body)
        .await
        .unwrap_or_else(|_| panic!("test did not finish within {secs} s"));
}

/// Whether `handle` is still running after `window` (it must not finish in that time).
async fn still_waiting<T>(handle: &mut tokio::task::JoinHandle<T>, window: Duration) -> bool {
    tokio::time::timeout(window, handle).await.is_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_holders_never_more_than_three_at_once() {
    let cluster = Cluster::start(1);
    bounded(40, async {
        let log: Arc<Mutex<Vec<(Instant, i32)>>> = Arc::default();
        let mut tasks = Vec::new();
        for i in 0..10 {
            let options = options(&cluster, "web", &format!("h{i}"));
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                let fleet = Fleet::connect(&options).await.expect("connect");
                let place = fleet
                    .acquire_place("v1", &settings("3", 0))
                    .await
                    .expect("place");
                place.confirm().await.expect("confirm a held place");
                log.lock().expect("log").push((Instant::now(), 1));
                // The "update": hold the place a while so holders overlap.
                tokio::time::sleep(Duration::from_millis(200)).await;
                log.lock().expect("log").push((Instant::now(), -1));
                place.release().await.expect("release");
                fleet.close().await.expect("close");
            }));
        }
        for task in tasks {
            task.await.expect("holder task");
        }
        let mut events = log.lock().expect("log").clone();
        // A leave happens before the release that lets the next holder in: on a tie, count
        // the leave first.
        events.sort();
        let (mut now, mut max) = (0, 0);
        for (_, delta) in &events {
            now += delta;
            max = max.max(now);
        }
        let entered = events.iter().filter(|(_, d)| *d == 1).count();
        assert_eq!(entered, 10, "every holder got a place");
        assert!(max <= 3, "{max} holders at once with max-parallel = 3");
        assert!(
            max >= 2,
            "holders never overlapped (max {max}): the limit is not used"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn percentage_of_live_hosts() {
    let cluster = Cluster::start(1);
    bounded(30, async {
        // 8 live hosts, 25% → 2 places.
        let mut fleets = Vec::new();
        for i in 0..8 {
            let fleet = Fleet::connect(&options(&cluster, "web", &format!("h{i}")))
                .await
                .expect("connect");
            fleet
                .publish_status(&status(&format!("h{i}"), "idle"))
                .await
                .expect("publish");
            fleets.push(Arc::new(fleet));
        }
        let quarter = settings("25%", 0);
        let first = fleets[0]
            .acquire_place("v1", &quarter)
            .await
            .expect("1st place");
        let _second = fleets[1]
            .acquire_place("v1", &quarter)
            .await
            .expect("2nd place");
        let third_fleet = fleets[2].clone();
        let third_settings = quarter.clone();
        let mut third =
            tokio::spawn(async move { third_fleet.acquire_place("v1", &third_settings).await });
        assert!(
            still_waiting(&mut third, Duration::from_millis(800)).await,
            "a third host got a place with 25% of 8 live hosts"
        );
        first.release().await.expect("release");
        let third = tokio::time::timeout(Duration::from_secs(5), third)
            .await
            .expect("the waiter proceeds after a release")
            .expect("task");
        third.expect("3rd place");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_holder_frees_its_place() {
    let cluster = Cluster::start(1);
    bounded(30, async {
        let holder = Fleet::connect(&options(&cluster, "web", "dead"))
            .await
            .expect("connect");
        let _place = holder
            .acquire_place("v1", &settings("1", 0))
            .await
            .expect("place");
        let waiter = Arc::new(
            Fleet::connect(&options(&cluster, "web", "alive"))
                .await
                .expect("connect"),
        );
        let w = waiter.clone();
        let mut waiting =
            tokio::spawn(async move { w.acquire_place("v1", &settings("1", 0)).await });
        assert!(
            still_waiting(&mut waiting, Duration::from_millis(500)).await,
            "the waiter got a place that is held"
        );
        // As a SIGKILLed host: the keep-alive stops, nothing is revoked or released.
        let killed = Instant::now();
        holder.lease.abandon();
        let place = tokio::time::timeout(Duration::from_secs(TTL + 2), waiting)
            .await
            .expect("the waiter proceeds within fleet-lease + 2 s")
            .expect("task")
            .expect("place");
        assert!(killed.elapsed() < Duration::from_secs(TTL + 2));
        place
            .confirm()
            .await
            .expect("the new holder's place is confirmed");
    })
    .await;
}

/// The limit is the group's, not each version's: a host still baking the previous version
/// keeps its place while a newer version is published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn places_of_different_versions_share_the_limit() {
    let cluster = Cluster::start(1);
    bounded(30, async {
        let old = Fleet::connect(&options(&cluster, "web", "baking-v1"))
            .await
            .expect("connect");
        let held = old
            .acquire_place("v1", &settings("1", 0))
            .await
            .expect("place");
        let new = Arc::new(
            Fleet::connect(&options(&cluster, "web", "wants-v2"))
                .await
                .expect("connect"),
        );
        let n = new.clone();
        let mut waiting =
            tokio::spawn(async move { n.acquire_place("v2", &settings("1", 0)).await });
        assert!(
            still_waiting(&mut waiting, Duration::from_millis(500)).await,
            "a place for v2 while v1's only place is held"
        );
        held.release().await.expect("release");
        let place = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the v2 host proceeds once v1's place is released")
            .expect("task")
            .expect("place");
        assert_eq!(place.version(), "v2");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirm_fails_once_the_lease_is_lost() {
    let cluster = Cluster::start(1);
    bounded(30, async {
        let fleet = Fleet::connect(&options(&cluster, "web", "h1"))
            .await
            .expect("connect");
        let place = fleet
            .acquire_place("v1", &settings("1", 0))
            .await
            .expect("place");
        place
            .confirm()
            .await
            .expect("confirm while the lease lives");
        // The lease ends behind the host's back (as when it was paused past its TTL).
        let id = fleet.lease.id();
        fleet
            .client
            .call("revoke", |mut c| async move { c.lease.revoke(id).await })
            .await
            .expect("revoke");
        let err = place
            .confirm()
            .await
            .expect_err("confirm after the lease is gone");
        assert!(matches!(err, FleetError::PlaceLost { .. }), "{err}");
        assert!(err.to_string().contains("not switching"), "{err}");
        // The keep-alive task notices within a renewal period.
        let lost = tokio::time::timeout(Duration::from_secs(TTL + 1), fleet.lease_lost())
            .await
            .expect("the loss is reported");
        assert!(matches!(lost, FleetError::LeaseLost { .. }), "{lost}");
        assert!(fleet.check_lease().is_err());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn halt_is_seen_by_a_watcher_and_resume_clears_it() {
    let cluster = Cluster::start(1);
    bounded(30, async {
        let a = Arc::new(
            Fleet::connect(&options(&cluster, "web", "a"))
                .await
                .expect("connect"),
        );
        let b = Fleet::connect(&options(&cluster, "web", "b"))
            .await
            .expect("connect");
        a.publish_status(&status("a", "baking"))
            .await
            .expect("publish");
        b.publish_status(&status("b", "idle"))
            .await
            .expect("publish");
        let watcher = a.clone();
        let watching = tokio::spawn(async move { watcher.wait_halted("v2").await });
        assert!(
            b.halt("v2", "post-update hook 10-restart failed")
                .await
                .expect("halt")
        );
        let halt = tokio::time::timeout(Duration::from_secs(2), watching)
            .await
            .expect("the watcher sees the halt within 2 s")
            .expect("task")
            .expect("halt");
        assert_eq!((halt.version.as_str(), halt.host.as_str()), ("v2", "b"));
        assert!(halt.reason.contains("10-restart"), "{halt:?}");
        // A second halt keeps the first one's story.
        assert!(!a.halt("v2", "other").await.expect("halt again"));
        assert_eq!(
            a.is_halted("v2").await.expect("read").expect("halted").host,
            "b"
        );
        assert_eq!(
            a.is_halted("v3").await.expect("read"),
            None,
            "only v2 is halted"
        );

        let status = a.status().await.expect("status");
        let json = serde_json::to_value(&status).expect("json");
        assert_eq!(json["fleet"], "web");
        assert_eq!(json["hosts"].as_array().map(Vec::len), Some(2), "{json}");
        assert_eq!(json["updating"], serde_json::json!(["a"]), "{json}");
        assert_eq!(json["halted"][0]["version"], "v2", "{json}");
        for field in ["host", "version", "phase", "last_check", "last_result"] {
            assert!(
                json["hosts"][0].get(field).is_some(),
                "{field} missing: {json}"
            );
        }

        assert!(a.resume("v2").await.expect("resume"));
        assert_eq!(a.is_halted("v2").await.expect("read"), None);
        assert!(a.status().await.expect("status").halted.is_empty());
        // A host that closes is gone from the status at once.
        b.close().await.expect("close");
        assert_eq!(a.status().await.expect("status").hosts.len(), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_wakes_a_watcher() {
    let cluster = Cluster::start(1);
    bounded(20, async {
        let a = Fleet::connect(&options(&cluster, "web", "a"))
            .await
            .expect("connect");
        let b = Fleet::connect(&options(&cluster, "web", "b"))
            .await
            .expect("connect");
        let mut notes = a.watch_notify().await.expect("watch");
        let mut next = tokio::spawn(async move { notes.next().await.map(|_| notes) });
        assert!(
            still_waiting(&mut next, Duration::from_millis(300)).await,
            "woken without a notify"
        );
        b.notify().await.expect("notify");
        let mut notes = tokio::time::timeout(Duration::from_secs(2), next)
            .await
            .expect("woken within 2 s")
            .expect("task")
            .expect("next");
        // A second notify made while nobody waits is not lost.
        b.notify().await.expect("notify");
        tokio::time::timeout(Duration::from_secs(2), notes.next())
            .await
            .expect("woken within 2 s")
            .expect("next");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn canaries_go_first() {
    let cluster = Cluster::start(1);
    bounded(30, async {
        let rollout = settings("3", 2);
        let c0 = Fleet::connect(&options(&cluster, "web", "c0"))
            .await
            .expect("connect");
        let c1 = Fleet::connect(&options(&cluster, "web", "c1"))
            .await
            .expect("connect");
        for (fleet, host) in [(&c0, "c0"), (&c1, "c1")] {
            fleet
                .publish_status(&status(host, "idle"))
                .await
                .expect("presence");
        }
        let p0 = c0
            .acquire_place("v1", &rollout)
            .await
            .expect("canary place");
        let p1 = c1
            .acquire_place("v1", &rollout)
            .await
            .expect("canary place");
        assert!(p0.is_canary() && p1.is_canary());
        assert_eq!(
            p1.rollout().canaries,
            vec!["c0".to_string(), "c1".to_string()]
        );

        let mut others = Vec::new();
        for i in 0..3 {
            let fleet = Fleet::connect(&options(&cluster, "web", &format!("h{i}")))
                .await
                .expect("connect");
            // Different settings of its own: the first asker's count.
            others.push(tokio::spawn(async move {
                let place = fleet.acquire_place("v1", &settings("1", 0)).await;
                (fleet, place)
            }));
        }
        for other in &mut others {
            assert!(
                still_waiting(other, Duration::from_millis(300)).await,
                "a non-canary started before any canary baked"
            );
        }
        p0.record_baked().await.expect("baked");
        p0.release().await.expect("release");
        for other in &mut others {
            assert!(
                still_waiting(other, Duration::from_millis(300)).await,
                "a non-canary started before the second canary baked"
            );
        }
        p1.record_baked().await.expect("baked");
        p1.release().await.expect("release");
        for other in others {
            let (_fleet, place) = tokio::time::timeout(Duration::from_secs(5), other)
                .await
                .expect("non-canaries proceed once both canaries baked")
                .expect("task");
            let place = place.expect("place");
            assert!(!place.is_canary());
            assert_eq!(place.rollout().settings.max_parallel, MaxParallel::Count(3));
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_dead_member_of_three_then_all() {
    let mut cluster = Cluster::start(3);
    bounded(40, async {
        let fleet = Fleet::connect(&options(&cluster, "web", "h1"))
            .await
            .expect("connect");
        fleet
            .publish_status(&status("h1", "idle"))
            .await
            .expect("publish");
        let talking_to = fleet.client.current_endpoint().to_owned();
        let member = cluster
            .members
            .iter_mut()
            .find(|m| m.client_url == talking_to)
            .expect("the endpoint is a member");
        member.kill();
        for round in 0..5 {
            fleet
                .publish_status(&status("h1", "idle"))
                .await
                .unwrap_or_else(|e| panic!("request {round} after one member died: {e}"));
            assert_eq!(fleet.status().await.expect("status").hosts.len(), 1);
        }
        assert_ne!(fleet.client.current_endpoint(), talking_to);
        fleet
            .check_lease()
            .expect("the lease survives one dead member");

        for member in &mut cluster.members {
            member.kill();
        }
        let start = Instant::now();
        let err = fleet.status().await.expect_err("no member left");
        let elapsed = start.elapsed();
        assert!(matches!(err, FleetError::Unreachable { .. }), "{err}");
        assert!(err.to_string().contains("etcd unreachable"), "{err}");
        assert!(
            elapsed < Duration::from_secs(8),
            "took {elapsed:?} to give up"
        );
    })
    .await;
}

#[tokio::test]
async fn nothing_listening_is_unreachable_in_bounded_time() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let mut client = ClientOptions::new(vec![format!("http://127.0.0.1:{port}")]);
    client.request_timeout = Duration::from_millis(500);
    client.retry_budget = Duration::from_secs(2);
    let options = FleetOptions {
        client,
        prefix: "/repo-deploy".into(),
        fleet: "web".into(),
        host: "h".into(),
        lease_secs: TTL,
    };
    let start = Instant::now();
    let err = Fleet::connect(&options).await.expect_err("nothing listens");
    assert!(matches!(err, FleetError::Unreachable { .. }), "{err}");
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );

    let mut bad = options.clone();
    bad.fleet = "a/b".into();
    assert!(matches!(
        Fleet::connect(&bad).await,
        Err(FleetError::Config(_))
    ));
    let mut bad = options.clone();
    bad.client.endpoints = vec!["127.0.0.1:2379".into()];
    let err = Fleet::connect(&bad).await.expect_err("no scheme");
    assert!(err.to_string().contains("http://HOST:PORT"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_and_password() {
    use etcdv3client::pb;
    let cluster = Cluster::start(1);
    bounded(20, async {
        let admin = client::Client::new(&ClientOptions::new(cluster.endpoints())).expect("client");
        admin
            .call("enable auth", |mut c| async move {
                let user = pb::AuthUserAddRequest {
                    name: "root".into(),
                    password: "s3cret".into(),
                    ..Default::default()
                };
                c.auth.user_add(user).await?;
                let grant = pb::AuthUserGrantRoleRequest {
                    user: "root".into(),
                    role: "root".into(),
                };
                c.auth.user_grant_role(grant).await?;
                c.auth.auth_enable(pb::AuthEnableRequest {}).await
            })
            .await
            .expect("enable auth");
        let mut good = options(&cluster, "web", "h1");
        good.client.user = Some("root".into());
        good.client.password = Some(crate::secret::Secret::new("s3cret"));
        let fleet = Fleet::connect(&good)
            .await
            .expect("connect with the password");
        fleet
            .publish_status(&status("h1", "idle"))
            .await
            .expect("publish");
        assert_eq!(fleet.status().await.expect("status").hosts.len(), 1);

        let mut wrong = good.clone();
        wrong.client.password = Some(crate::secret::Secret::new("nope"));
        let err = Fleet::connect(&wrong).await.expect_err("wrong password");
        assert!(matches!(err, FleetError::Auth { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("etcd-password") && !text.contains("nope"),
            "{text}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_larger_than_the_group_is_a_configuration_error() {
    let cluster = Cluster::start(1);
    bounded(20, async {
        let a = Fleet::connect(&options(&cluster, "web", "a"))
            .await
            .expect("connect");
        a.publish_status(&status("a", "idle"))
            .await
            .expect("presence");
        let err = a
            .acquire_place("v1", &settings("1", 3))
            .await
            .expect_err("3 canaries in a group of 1");
        assert!(matches!(err, FleetError::Config(_)), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains("canary = 3") && text.contains("1 live host"),
            "{text}"
        );
    })
    .await;
}
