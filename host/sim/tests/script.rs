//! Scenario scripts: a Rhai script drives the simulator and its report says what happened.

use lattice_sim::{SimError, run_scenario};

type TestResult = Result<(), Box<dyn std::error::Error>>;

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
fn a_seed_replays_the_same_run() -> TestResult {
    // Partitions, loss, duplication, delays (changed mid-run), a kill and a restart: every
    // event on the network, its simulated time, and the end state are the same on a second
    // run.
    let script = format!(
        "{SCENARIO}\nnetwork(0.3, 0.1, 5); crash(1); restart(1); put(2, kv, \"late\", \"x\"); converge(kv, 60);"
    );
    let (a, b) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let first = run_scenario(&script, 7, a.path())?;
    let second = run_scenario(&script, 7, b.path())?;
    assert_eq!(first.error, None);
    assert!(first.trace.events > 100, "{:?}", first.trace);
    assert_eq!(first.trace, second.trace);
    assert_eq!(first.sim_s, second.sim_s);
    assert_eq!(first.sim_converge_s, second.sim_converge_s);
    assert_eq!(first.metrics, second.metrics);
    // Another seed is another run.
    let other = run_scenario(&script, 8, a.path().join("other").as_path())?;
    assert_ne!(first.trace, other.trace);
    Ok(())
}

#[test]
fn a_script_drives_partitions_writes_and_convergence() -> TestResult {
    let dir = tempfile::tempdir()?;
    let report = run_scenario(SCENARIO, 11, dir.path())?;
    assert_eq!(report.error, None);
    assert!(report.converged);
    assert_eq!((report.nodes, report.writes, report.seed), (4, 44, 11));
    assert!(report.wall_s > 0.0 && report.converge_s >= 0.0);
    Ok(())
}

#[test]
fn a_failing_step_is_in_the_report_and_a_bad_script_is_an_error() -> TestResult {
    let dir = tempfile::tempdir()?;
    let report = run_scenario(
        "node(); let s = store(0, \"kv\"); put(5, s, \"k\", \"v\");",
        1,
        dir.path().join("a").as_path(),
    )?;
    assert!(!report.converged);
    let error = report.error.unwrap_or_default();
    assert!(error.contains("node 5"), "{error}");
    let refused = run_scenario("node(", 1, dir.path().join("b").as_path());
    assert!(matches!(refused, Err(SimError::Script(_))), "{refused:?}");
    let bad = run_scenario(
        "node(); network(1.5, 0.0, 0);",
        1,
        dir.path().join("c").as_path(),
    )?;
    assert!(
        bad.error.unwrap_or_default().contains("probabilities"),
        "a loss of 1.5 was taken"
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
    let dir = tempfile::tempdir()?;
    let report = run_scenario(FAULTS, 5, dir.path())?;
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
