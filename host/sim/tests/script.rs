//! Scenario scripts: a Rhai script drives the simulator and its report says what happened.

use lattice_sim::{SimError, run_scenario};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}

const SCENARIO: &str = r#"
network(0.1, 0.05, 10);
let n = 4;
for i in 0..n { node(); }
let kv = store(0, "kv");
for i in 1..n { join(0, i, kv); }
let hits = child(1, kv, "counter");
converge(hits, 60); // open on every member before they write to it
partition([[0, 1], [2, 3]]);
for i in 0..40 {
    let at = rand(n);
    put(at, kv, "k" + i, "v" + at);
    if i % 10 == 0 { increment(at, hits, "h"); }
}
heal();
converge(kv, 60);
converge(hits, 60);
if count(0, hits, "h") != 4 { throw "the counter lost increments"; }
if get(3, kv, "k39") == () { throw "the last put is missing"; }
"#;

#[test]
fn a_script_drives_partitions_writes_and_convergence() -> TestResult {
    let rt = runtime()?;
    let dir = tempfile::tempdir()?;
    let report = run_scenario(SCENARIO, 11, dir.path(), rt.handle().clone())?;
    assert_eq!(report.error, None);
    assert!(report.converged);
    assert_eq!((report.nodes, report.writes, report.seed), (4, 44, 11));
    assert!(report.wall_s > 0.0 && report.converge_s >= 0.0);
    Ok(())
}

#[test]
fn a_failing_step_is_in_the_report_and_a_bad_script_is_an_error() -> TestResult {
    let rt = runtime()?;
    let dir = tempfile::tempdir()?;
    let report = run_scenario(
        "node(); let s = store(0, \"kv\"); put(5, s, \"k\", \"v\");",
        1,
        dir.path().join("a").as_path(),
        rt.handle().clone(),
    )?;
    assert!(!report.converged);
    let error = report.error.unwrap_or_default();
    assert!(error.contains("node 5"), "{error}");
    let refused = run_scenario(
        "node(",
        1,
        dir.path().join("b").as_path(),
        rt.handle().clone(),
    );
    assert!(matches!(refused, Err(SimError::Script(_))), "{refused:?}");
    let late = run_scenario(
        "node(); network(0.5, 0.0, 0);",
        1,
        dir.path().join("c").as_path(),
        rt.handle().clone(),
    )?;
    assert!(
        late.error
            .unwrap_or_default()
            .contains("before the first node")
    );
    Ok(())
}

/// A hostile member and a killed one: the rest ban the first, recover the second.
const FAULTS: &str = r#"
let n = 4;
for i in 0..n { node(); }
let kv = store(0, "kv");
for i in 1..n { join(0, i, kv); }
hostile(3);
for i in 0..20 {
    put(i % 3, kv, "k" + i, "v");
    put(3, kv, "evil" + i, "x");
}
put(2, kv, "before-kill", "v");
crash(2);
put(0, kv, "while-down", "v");
restart(2);
converge(kv, 60);
if get(2, kv, "before-kill") != "v" { throw "the killed node lost an acknowledged write"; }
if get(2, kv, "while-down") != "v" { throw "the restarted node did not catch up"; }
for i in 0..3 { if get(i, kv, "evil0") != () { throw "node " + i + " projects a hostile write"; } }
"#;

#[test]
fn a_hostile_member_is_banned_and_a_killed_one_recovers() -> TestResult {
    let rt = runtime()?;
    let dir = tempfile::tempdir()?;
    let report = run_scenario(FAULTS, 5, dir.path(), rt.handle().clone())?;
    assert_eq!(report.error, None);
    assert!(report.converged);
    assert!(
        report.metrics.bans >= 1,
        "no member banned the hostile node: {:?}",
        report.metrics
    );
    assert!(report.metrics.gossip_sent >= 40 && report.metrics.gossip_delivered > 0);
    assert_eq!(report.convergence_pct, 100.0);
    Ok(())
}
